"""Sampling: the brain→image pipeline, its folders, and exploration helpers.

The denoising loop they share lives below the backbones, in :mod:`brainrecon.diffusion`.

Public names are importable from here (loaded lazily, so ``import brainrecon.sampling`` is cheap)::

    from brainrecon.sampling import BrainToImagePipeline, load_reconstructor, evaluate_reconstructor
"""
from .._lazy import lazy_exports

_EXPORTS = {
    "BrainToImagePipeline": "pipeline", "load_reconstructor": "folders", "register_conditioner": "folders",
    "TOY_RECONSTRUCTOR_DIR": "folders", "SHIPPED_RECONSTRUCTORS": "folders", "save_reconstructor_folder": "folders",
    "load_reconstructor_folder": "folders", "reconstructor_info": "folders",
    "reconstruct": "explore", "sweep_control_scale": "explore", "swap_grid": "explore",
    "evaluate_reconstructor": "explore", "make_test_maps": "explore", "plot_control_sweep": "explore",
    "plot_swap_grid": "explore", "sweep_feature_guidance": "explore", "evaluate_retrieval": "explore",
    "score_trivial_baselines": "explore", "make_mean_image": "explore", "plot_kappa_eta": "explore",
    "feature_guidance_label": "explore",
    "score_images": "explore", "score_reconstructions": "explore", "STANDARD_METRICS": "explore",
    "optimise_latents": "latent_opt", "LatentOptimisationOutput": "latent_opt",
    "compare_stages": "two_stage", "plot_stage_losses": "two_stage", "plot_latent_optimisation": "two_stage",
    "write_demo_report": "demo", "make_demo_world": "demo", "demo_world_config": "demo",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
