"""Data: the embedded toy world, the NSD reader, cortical flatmaps and training datasets.

Public names are importable from here (loaded lazily, so ``import brainrecon.data`` is cheap)::

    from brainrecon.data import make_toyworld, load_nsd, FlatmapProjector, make_toy_dataset
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "make_scenes": "scenes", "plot_scenes": "scenes", "Scenes": "scenes",
    "ToyWorldConfig": "toyworld", "ToyWorld": "toyworld", "make_toyworld": "toyworld",
    "save_toyworld": "toyworld", "load_toyworld": "toyworld",
    "plot_noise_ceiling": "toyworld", "plot_subject_vertices": "toyworld",
    "load_fsaverage5": "fsaverage", "load_visual_areas": "fsaverage",
    "reduce_to_fsaverage5": "fsaverage",
    "FlatmapProjector": "surface", "plot_flatmap": "surface",
    "load_nsd": "nsd", "NSDSubjectData": "nsd", "nsd_trial_table": "nsd",
    "load_nsd_images": "nsd", "make_nsd_fixture": "nsd_fixture",
    "BrainRecords": "pairs", "BrainImageDataset": "pairs", "SubjectBatchSampler": "pairs",
    "make_toy_dataset": "pairs", "make_nsd_dataset": "pairs",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
