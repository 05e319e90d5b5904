"""brainrecon: reconstruct the images a person saw from fMRI with diffusion models.

Four published methods (NeuroPictor, NeuralDiffuser, MindDiffuser, Contrast-Attend-Diffuse)
on one shared core, runnable on an embedded toy world (CPU, minutes) and on the Natural
Scenes Dataset with Stable Diffusion 2.1 (local files, GPUs). See README.md.
"""
__version__ = "0.1.0"
