"""The evaluation suite: the field's standard metrics, retrieval, brain correlation, n-way, toy attributes.

Follows the MindEye / brain-diffuser protocol (``data_cards/metrics.md``):

* low level: :func:`pixcorr`, :func:`ssim` (resize chains of :data:`PROTOCOLS`);
* networks: two-way identification (:func:`two_way`) for AlexNet(2), AlexNet(5), Inception,
  CLIP, and correlation distances (:func:`correlation_distance`) for EffNet-B and SwAV, on
  a feature set: :class:`RealFeatureSet` (published weights from local files) or
  :class:`ToyFeatureSet` (toy-CLIP layers standing in for them);
* :func:`retrieval` (300-way top-1, both directions), :func:`brain_correlation` per region,
  :func:`n_way_top_k`, toy :func:`attribute_scores`;
* :func:`evaluate` — everything as a pandas table with confidence intervals;
  :func:`evaluate_folder` — the same on a results folder (:func:`save_results`), which is
  what ``brainrecon evaluate DIR`` runs; :func:`plot_metrics`, :func:`plot_reconstruction_grid`.
"""
from .attributes import attribute_scores, attribute_scores_per_image
from .brain import (RidgeEncodingModel, brain_correlation, brain_correlation_per_image, toy_encoder, toy_measured,
                    toy_regions)
from .identification import (correlation_distance, correlation_distance_per_image, mean_ci, n_way_top_k,
                             n_way_top_k_per_image, two_way, two_way_pairwise, two_way_per_image)
from .lowlevel import PROTOCOLS, as_tensor, as_uint8, pixcorr, pixcorr_per_image, resize, ssim, ssim_per_image
from .networks import (FEATURE_NAMES, NETWORKS, NetworkSpec, RealFeatureSet, ToyFeatureSet, find_weights,
                       load_state_dict, make_feature_set, register_network)
from .plotting import plot_metrics, plot_reconstruction_grid
from .results import Results, find_results_dir, load_results, make_degraded_results, save_results
from .retrieval import retrieval, retrieval_loops
from .suite import METRIC_INFO, evaluate, evaluate_folder, metrics_dict, run_evaluate_cli

__all__ = [
    "PROTOCOLS", "as_tensor", "as_uint8", "resize", "pixcorr", "pixcorr_per_image", "ssim", "ssim_per_image",
    "two_way", "two_way_per_image", "two_way_pairwise", "correlation_distance", "correlation_distance_per_image",
    "n_way_top_k", "n_way_top_k_per_image", "mean_ci", "retrieval", "retrieval_loops",
    "brain_correlation", "brain_correlation_per_image", "RidgeEncodingModel", "toy_encoder", "toy_measured",
    "toy_regions", "attribute_scores", "attribute_scores_per_image",
    "NETWORKS", "NetworkSpec", "FEATURE_NAMES", "register_network", "find_weights", "load_state_dict",
    "RealFeatureSet", "ToyFeatureSet", "make_feature_set",
    "evaluate", "evaluate_folder", "run_evaluate_cli", "metrics_dict", "METRIC_INFO",
    "Results", "save_results", "load_results", "find_results_dir", "make_degraded_results",
    "plot_metrics", "plot_reconstruction_grid",
]
