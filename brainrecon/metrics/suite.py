"""The whole suite in one call: :func:`evaluate` (arrays) and :func:`evaluate_folder` (a results folder)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.toystore import load_toyworld
from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import DataNotFoundError, InvalidInputError, check_choice, check_device
from ..io import check_output_dir, write_json
from .attributes import attribute_scores_per_image
from .brain import brain_correlation, toy_encoder, toy_measured, toy_regions
from .identification import correlation_distance_per_image, mean_ci, n_way_top_k_per_image, two_way_per_image
from .lowlevel import PROTOCOLS, as_tensor, lowlevel_per_image, protocol_base
from .networks import find_weights, make_feature_set
from .results import find_results_dir, load_results
from .retrieval import retrieval

__all__ = ["evaluate", "evaluate_folder", "run_evaluate_cli", "METRIC_INFO", "metrics_dict", "metrics_path"]

#: key -> (label, group, higher_is_better, chance)
METRIC_INFO = {
    "pixcorr": ("PixCorr", "low-level", True, 0.0),
    "ssim": ("SSIM", "low-level", True, None),
    "alexnet2": ("AlexNet(2)", "low-level", True, 0.5),
    "alexnet5": ("AlexNet(5)", "low-level", True, 0.5),
    "inception": ("Inception", "high-level", True, 0.5),
    "clip": ("CLIP", "high-level", True, 0.5),
    "effnet": ("EffNet-B", "high-level", False, None),
    "swav": ("SwAV", "high-level", False, None),
    "retrieval_fwd": ("Image retrieval", "retrieval", True, None),
    "retrieval_bwd": ("Brain retrieval", "retrieval", True, None),
    "nway": ("n-way top-k", "semantic", True, None),
    "category_acc": ("Category acc.", "attributes", True, None),
    "colour_acc": ("Colour acc.", "attributes", True, None),
    "both_acc": ("Category & colour acc.", "attributes", True, None),
    "position_error": ("Position error", "attributes", False, None),
    "box_iou": ("Box IoU", "attributes", True, None),
}
_TWO_WAY = ("alexnet2", "alexnet5", "inception", "clip")
_DISTANCES = ("effnet", "swav")
ALL_METRICS = ("pixcorr", "ssim") + _TWO_WAY + _DISTANCES + ("retrieval", "brain", "nway", "attributes")


def evaluate(reconstructions, targets, *, feature_set="auto", weights_dir=None, weights=None, backbone="toy",
             protocol: str = "mindeye", metrics=None, brain_embeddings=None, image_embeddings=None,
             encoder=None, measured=None, regions=None, attributes=None, n_way: int = 50, top_k: int = 1,
             n_trials: int = 50, retrieval_n_way: int = 300, retrieval_loops: int = 30, seed: int = 0,
             confidence: float = 0.95, device="cpu", batch_size: int = 32, return_per_image: bool = False):
    """Every standard metric of paired reconstructions and targets, as a tidy table.

    Parameters
    ----------
    reconstructions, targets : array-like
        Paired images: ``(N, H, W, 3)`` uint8/float or ``(N, 3, H, W)`` float in [0, 1].
    feature_set : {"auto", "real", "toy"} or feature set
        Networks of the feature metrics: ``"real"`` (published weights from local files),
        ``"toy"`` (toy-CLIP stand-ins), ``"auto"`` (real when every file is found).
    weights_dir, weights : path-like, dict
        Where the real weights are (see ``data_cards/metrics.md``).
    backbone : Backbone or str
        Toy feature set's backbone (default the shipped ``"toy"``).
    protocol : {"mindeye", "neuropictor", "brain-diffuser"}
    metrics : sequence of str, optional
        Subset of ``pixcorr, ssim, alexnet2, alexnet5, inception, clip, effnet, swav,
        retrieval, brain, nway, attributes``. Default: every metric whose inputs are given
        and whose networks are found (n-way needs the classifier; attributes the toy one).
    brain_embeddings, image_embeddings : array (N, ...), optional
        Retrieval: brain-predicted embeddings and the targets' embeddings in the same space
        (``image_embeddings`` default: the feature set's CLIP embedding of the targets).
    encoder : callable, optional
        ``images -> (N, V)`` encoding model for brain correlation, with ``measured``
        ``(N, V)`` and ``regions`` ``{name: mask}``.
    attributes : dict, optional
        Toy ground truth ``category``, ``colour``, ``bbox`` of the targets.
    n_way, top_k, n_trials : int
        n-way semantic accuracy (capped at the classifier's number of classes).
    retrieval_n_way, retrieval_loops : int
    seed : int
        Seed of n-way distractors (retrieval keeps MindEye's seed 42).
    confidence : float
        Level of the normal confidence intervals (over images; over loops for retrieval).
    device, batch_size
    return_per_image : bool
        Also return a per-image table (one column per metric).

    Returns
    -------
    pandas.DataFrame
        One row per metric: ``metric`` (key), ``label``, ``group``, ``value`` (mean),
        ``ci_low``, ``ci_high``, ``n``, ``higher_is_better``, ``chance``, ``feature_set``,
        ``protocol``, ``seconds``. With ``return_per_image``, ``(table, per_image)``.
    """
    check_device(device)
    check_choice("protocol", protocol, PROTOCOLS)
    rec, gt = as_tensor(reconstructions, "reconstructions"), as_tensor(targets, "targets")
    if len(rec) != len(gt):
        raise InvalidInputError(f"{len(rec)} reconstructions but {len(gt)} targets; they must pair up one to one.")
    if len(rec) < 2:
        raise InvalidInputError("the suite needs at least 2 image pairs (two-way identification compares pairs).")
    wanted = _wanted(metrics, brain_embeddings, encoder, measured, attributes)
    n = len(rec)
    per_image, rows = {}, []
    fs = None
    if any(m in wanted for m in _TWO_WAY + _DISTANCES + ("nway", "attributes")) or (
            "retrieval" in wanted and image_embeddings is None):
        fs = make_feature_set(feature_set, weights_dir, weights, backbone, protocol, device, batch_size)
    fs_kind = getattr(fs, "kind", None)
    if metrics is None and fs is not None:          # by default, leave out what this feature set cannot answer
        if "nway" in wanted and not _has_classifier(fs):
            wanted.remove("nway")
        if "attributes" in wanted and getattr(fs, "attribute_classifier", None) is None:
            wanted.remove("attributes")

    def add(key, values=None, value=None, ci=None, extra_label=None, timing=0.0, chance=None):
        label, group, hib, ch = METRIC_INFO.get(key, (key, "brain", True, None))
        if values is not None:
            per_image[key] = np.asarray(values, float)
            value, lo, hi = mean_ci(values, confidence)
        else:
            lo, hi = ci if ci is not None else (np.nan, np.nan)
        rows.append(dict(metric=key, label=extra_label or label, group=group, value=value, ci_low=lo, ci_high=hi,
                         n=n, higher_is_better=hib, chance=chance if chance is not None else ch,
                         feature_set=fs_kind if key in _TWO_WAY + _DISTANCES + ("nway",) else None,
                         protocol=protocol, seconds=timing))

    rb, gb = protocol_base(rec, protocol), protocol_base(gt, protocol)
    low = tuple(k for k in ("pixcorr", "ssim") if k in wanted)
    if low:
        t = time.perf_counter()
        vals = lowlevel_per_image(rb, gb, protocol=protocol, _based=True, want=low)
        for key in low:
            add(key, vals[key], timing=(time.perf_counter() - t) / len(low))
    feats = [m for m in _TWO_WAY + _DISTANCES if m in wanted]
    if feats:
        t = time.perf_counter()
        fp, fg = fs.extract(rb, feats, based=True), fs.extract(gb, feats, based=True)
        dt = (time.perf_counter() - t) / len(feats)
        for m in feats:
            vals = two_way_per_image(fp[m], fg[m]) if m in _TWO_WAY else correlation_distance_per_image(fp[m], fg[m])
            add(m, vals, timing=dt)
    if "retrieval" in wanted:
        t = time.perf_counter()
        if image_embeddings is None:
            image_embeddings = fs.extract(gb, ("clip",), based=True)["clip"]
        r = retrieval(brain_embeddings, image_embeddings, retrieval_n_way, retrieval_loops, k=1, confidence=confidence)
        dt = time.perf_counter() - t
        for d, lab in (("fwd", "Image retrieval"), ("bwd", "Brain retrieval")):
            add(f"retrieval_{d}", value=r[d], ci=r[f"{d}_ci"], extra_label=f"{lab} ({r['n_way']}-way)", timing=dt,
                chance=r["chance"])
    if "brain" in wanted:
        t = time.perf_counter()
        bc = brain_correlation(rec, measured, encoder, regions)
        dt = time.perf_counter() - t
        for region, vals in bc.items():
            add(f"brain_corr_{region}", vals, extra_label=f"Brain corr. {region}", timing=dt)
    if "nway" in wanted:
        t = time.perf_counter()
        pp, pg = fs.class_probabilities(rec), fs.class_probabilities(gt)
        k = int(min(n_way, pp.shape[1]))
        vals = n_way_top_k_per_image(pp, pg, n_way=k, top_k=top_k, n_trials=n_trials, seed=seed)
        add("nway", vals, extra_label=f"{k}-way top-{top_k}", timing=time.perf_counter() - t, chance=top_k / k)
    if "attributes" in wanted:
        clf = getattr(fs, "attribute_classifier", None)
        if clf is None:
            raise InvalidInputError("attribute scores need the toy attribute classifier (feature_set='toy' with a "
                                    "backbone that has attribute_classifier/).")
        t = time.perf_counter()
        s = attribute_scores_per_image(rec, attributes["category"], attributes["colour"], attributes["bbox"], clf,
                                       image_size=gt.shape[-1])
        dt = (time.perf_counter() - t) / len(s)
        names = {"category_ok": "category_acc", "colour_ok": "colour_acc", "both_ok": "both_acc"}
        for k2, vals in s.items():
            add(names.get(k2, k2), vals, timing=dt)
    table = pd.DataFrame(rows)
    if return_per_image:
        return table, pd.DataFrame(per_image)
    return table


def _has_classifier(fs) -> bool:
    if getattr(fs, "kind", None) == "toy":
        return getattr(fs, "attribute_classifier", None) is not None
    try:
        find_weights(fs.spec("vit_h_14"), fs.weights, fs.weights_dir)
        return True
    except Exception:  # noqa: BLE001 - any failure: no classifier
        return False


def _wanted(metrics, brain_embeddings, encoder, measured, attributes) -> list:
    if metrics is None:
        out = ["pixcorr", "ssim", *_TWO_WAY, *_DISTANCES]
        if brain_embeddings is not None:
            out.append("retrieval")
        if encoder is not None and measured is not None:
            out.append("brain")
        out.append("nway")
        if attributes is not None:
            out.append("attributes")
        return out
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for m in metrics:
        check_choice("metric", m, ALL_METRICS)
    if "retrieval" in metrics and brain_embeddings is None:
        raise InvalidInputError("retrieval needs brain_embeddings (the method's brain-predicted embeddings).")
    if "brain" in metrics and (encoder is None or measured is None):
        raise InvalidInputError("brain correlation needs an encoder (images -> responses) and measured responses.")
    if "attributes" in metrics and attributes is None:
        raise InvalidInputError("attribute scores need the targets' ground truth: attributes={'category', 'colour', "
                                "'bbox'} (toy world).")
    return metrics


def metrics_dict(table) -> dict:
    """``{metric: value}`` of a table from :func:`evaluate` (JSON-ready floats)."""
    return {r.metric: (None if not np.isfinite(r.value) else float(r.value)) for r in table.itertuples()}


def evaluate_folder(results_dir, out=None, feature_set="auto", weights_dir=None, weights=None, backbone="toy",
                    protocol: str = "mindeye", metrics=None, device="cpu", batch_size: int = 32, world=None,
                    **kwargs):
    """Evaluate a results folder (see :mod:`brainrecon.metrics.results`) and write ``metrics.json``.

    Toy folders with ``image_ids``, ``subject`` and a toy world in ``meta.json`` get brain
    correlation (the world is rebuilt from its config, or pass ``world``) and attribute
    scores; folders with ``brain_embeddings.npy`` get retrieval; folders with
    ``measured.npy`` need an ``encoder=`` keyword for brain correlation.

    Parameters
    ----------
    results_dir : path-like
        A results folder, or a folder holding one as ``results/`` (a demo's output folder).
    out : path-like, optional
        Where to write the JSON (default ``metrics.json`` in the results folder); ``False`` writes
        nothing. Checked before anything is computed.
    feature_set, weights_dir, weights, backbone, protocol, metrics, device, batch_size
        As :func:`evaluate`.
    world : ToyWorld, optional
        The toy world of a toy folder (avoids rebuilding it).
    **kwargs
        Passed to :func:`evaluate` (``encoder``, ``n_way``...).

    Returns
    -------
    pandas.DataFrame
        The table of :func:`evaluate`.
    """
    check_device(device)
    res = load_results(results_dir)
    results_dir = res.path
    if out is not False:
        out = metrics_path(results_dir, out)
    meta = res.meta
    kw = dict(kwargs)
    if res.brain_embeddings is not None:
        kw.setdefault("brain_embeddings", res.brain_embeddings)
        if res.image_embeddings is not None:
            kw.setdefault("image_embeddings", res.image_embeddings)
    if res.attributes is not None and feature_set != "real":
        kw.setdefault("attributes", res.attributes)
    if res.measured is not None:
        kw.setdefault("measured", res.measured)
        kw.setdefault("regions", res.regions)
    if meta.get("world") == "toy" and meta.get("subject") and meta.get("image_ids") and (
            world is not None or meta.get("toyworld")) and "encoder" not in kw:
        world = world if world is not None else _rebuild_toyworld(meta["toyworld"])
        kw["encoder"] = toy_encoder(world, meta["subject"])
        kw["measured"] = toy_measured(world, meta["subject"], meta["image_ids"])
        kw["regions"] = toy_regions(world, meta["subject"])
    if "measured" in kw and "encoder" not in kw:
        warnings.warn(f"{results_dir} holds measured responses but no encoding model was given; brain "
                      "correlation is left out (pass encoder=..., e.g. a fitted RidgeEncodingModel).", stacklevel=2)
        kw.pop("measured"), kw.pop("regions", None)
    t = time.perf_counter()
    table = evaluate(res.reconstructions, res.targets, feature_set=feature_set, weights_dir=weights_dir,
                     weights=weights, backbone=backbone, protocol=protocol, metrics=metrics, device=device,
                     batch_size=batch_size, **kw)
    if out is not False:
        write_json(out, {"metrics": metrics_dict(table), "table": table.to_dict(orient="records"),
                         "results_dir": str(results_dir), "method": meta.get("method"), "world": meta.get("world"),
                         "subject": meta.get("subject"), "n": len(res), "protocol": protocol,
                         "feature_set": next(iter(table.feature_set.dropna()), None),
                         "seconds": time.perf_counter() - t})
    return table


def metrics_path(results_dir, out=None) -> Path:
    """Where :func:`evaluate_folder` writes its JSON (``out``, else ``results_dir/metrics.json``), proven writable."""
    out = Path(out).expanduser() if out else Path(results_dir) / "metrics.json"
    if out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a folder; pass a file name for the metrics JSON, e.g. "
                                f"{out / 'metrics.json'}.")
    check_output_dir(out.parent, f"the folder of --out {str(out)!r}")
    return out


def _rebuild_toyworld(spec: dict):
    if "path" in spec:
        return load_toyworld(spec["path"])

    return make_toyworld(ToyWorldConfig(**spec["config"]), progress=False)


def run_evaluate_cli(args) -> int:
    """``brainrecon evaluate DIR [--weights FOLDER] [--out FILE] [--feature-set auto|real|toy]
    [--protocol mindeye|neuropictor|brain-diffuser] [--device cpu]``.

    ``args`` is an ``argparse.Namespace`` with ``results_dir`` and optionally ``weights``,
    ``out``, ``feature_set``, ``protocol``, ``device``. Every argument is checked before any
    scoring. Prints the table; returns 0.
    """
    check_device(getattr(args, "device", None) or "cpu")
    results_dir = find_results_dir(args.results_dir)
    out = metrics_path(results_dir, getattr(args, "out", None))
    weights = getattr(args, "weights", None)
    if weights is not None and not Path(weights).expanduser().is_dir():
        raise DataNotFoundError(f"the --weights folder {weights!r}", [Path(weights).expanduser()],
                                data_card="metrics.md", hint="Pass the folder that holds the real networks' "
                                                             "weights, or leave --weights out for the toy set.")
    if results_dir != Path(args.results_dir).expanduser():
        print(f"scoring {results_dir} (the results folder inside {args.results_dir})")
    table = evaluate_folder(results_dir, out=out,
                            feature_set=getattr(args, "feature_set", None) or "auto",
                            weights_dir=getattr(args, "weights", None),
                            protocol=getattr(args, "protocol", None) or "mindeye",
                            device=getattr(args, "device", None) or "cpu")
    cols = ["label", "value", "ci_low", "ci_high", "chance", "feature_set"]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out}")
    return 0
