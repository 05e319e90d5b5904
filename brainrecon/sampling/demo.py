"""``brainrecon demo``: reconstruct held-out toy scans with a saved reconstructor and write a report.

:func:`write_demo_report` loads a reconstructor (default the shipped
``brainrecon/weights/neuropictor_toy``), rebuilds the toy world it was trained on
(:func:`make_demo_world`), reconstructs a
subject's held-out shared test scans, sweeps the control scale ``α`` (NeuroPictor Eq. 7), shows a
semantic swap and scores everything with :func:`brainrecon.sampling.evaluate_reconstructor`.
"""
from __future__ import annotations

import math
import numbers
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..data.toystore import load_toyworld
from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import InvalidInputError, check_choice, check_range
from ..io import atomic_file, check_output_dir, read_json, write_json
from ..metrics import plot_reconstruction_grid, save_results
from ..plotting import save_figure
from .explore import (KAPPA_ETA_METRICS, evaluate_reconstructor, evaluate_retrieval, feature_guidance_label,
                      make_mean_image, make_test_maps, plot_control_sweep, plot_kappa_eta, plot_swap_grid,
                      reconstruct, score_reconstructions, score_trivial_baselines, swap_grid, sweep_control_scale,
                      sweep_feature_guidance)
from .folders import SHIPPED_RECONSTRUCTORS, reconstructor_info
from .pipeline import load_reconstructor
from .two_stage import STAGE_ROWS, compare_stages, plot_stage_losses

__all__ = ["write_demo_report", "make_demo_world", "demo_world_config"]


def demo_world_config(pipe, preset: str | None = None):
    """The config of the toy world a reconstructor was trained on, or the path of a saved world.

    Looked up in order: ``preset`` (``"default"``/``"smoke"``), the folder's ``toyworld`` entry
    (``ToyWorldConfig`` as a dict, or ``{"path": saved world}``), the ``world`` of its ``run.json``
    (written by the training stages; a run's ``OUT/reconstructor/`` reads ``OUT/run.json``), else the
    default world. Nothing is built or loaded.

    Parameters
    ----------
    pipe : BrainToImagePipeline or dict
        The reconstructor, or its ``info`` (:func:`~brainrecon.sampling.reconstructor_info`).
    preset : {"default", "smoke"}, optional

    Returns
    -------
    ToyWorldConfig or str
        A config, or the folder of a saved world (``{"path": ...}`` entries).
    """
    check_choice("world_preset", preset, (None, "default", "smoke"))
    info = pipe if isinstance(pipe, dict) else pipe.info
    spec = info.get("toyworld")
    run = run_record(info, "run.json")
    if spec is None and run is not None:
        spec = read_json(run, "Copy the reconstructor folder again, or pass the world preset (--world).").get("world")
    if preset == "smoke":
        return ToyWorldConfig.smoke()
    if preset == "default" or not isinstance(spec, dict) or "nsd_root" in spec:
        return ToyWorldConfig()
    if "path" in spec:
        return str(spec["path"])
    spec = dict(spec.get("config", spec))
    return ToyWorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def run_record(info: dict, name: str):
    """The run record ``name`` (``run.json``, ``metrics.json``) of a reconstructor folder, or None.

    A shipped folder holds its records; the ``reconstructor/`` folder a training run writes has them in the
    run folder above it.
    """
    folder = Path(info.get("path", "."))
    for p in (folder / name, folder.parent / name if folder.name == "reconstructor" else None):
        if p is not None and p.is_file():
            return p
    return None


def make_demo_world(pipe, preset: str | None = None, progress: bool = True):
    """The toy world a reconstructor was trained on (built, or loaded; see :func:`demo_world_config`)."""
    config = demo_world_config(pipe, preset)
    if isinstance(config, str):
        return load_toyworld(config)
    return make_toyworld(config, progress=progress)


def write_demo_report(out_dir, reconstructor=None, subject: str | None = None, n_test: int = 24,
                      num_inference_steps: int | None = None, alphas=(0.0, 0.5, 1.0, 1.5), n_show: int = 6,
                      n_swap: int = 4, seed: int = 0, world=None, world_preset: str | None = None,
                      threads: int | None = 1, progress: bool = True, method: str | None = None,
                      kappas=(0.0, 1e-3, 1e-2), etas=(0.2, 1.0), strength: float = 0.75,
                      iterations: int = 10, lr: float = 0.01) -> dict:
    """Reconstruct and score held-out scans; write PNG figures and ``report.json`` to ``out_dir``.

    NeuroPictor reconstructors: an α sweep and a semantic swap. NeuralDiffuser reconstructors: a κ × η
    sweep of feature guidance beside the mean-image and shuffled-scan baselines, and retrieval.
    MindDiffuser reconstructors: stage 1 vs stage 2 vs stage 2 from a random ``z``
    (:func:`~brainrecon.sampling.two_stage.compare_stages`) beside the same baselines. CAD
    reconstructors: the standard table (with n-way top-1) and the toy judge's figures of the
    reconstructions beside the shuffled-scan and mean-image baselines.

    Parameters
    ----------
    out_dir : path-like
    reconstructor : path-like, optional
        A reconstructor folder (default the shipped toy one of ``method``).
    method : {"neuropictor", "neuraldiffuser", "minddiffuser", "cad"}, optional
        Which shipped reconstructor to use when ``reconstructor`` is not given (default NeuroPictor);
        with a folder, the folder's own method is used and a different ``method`` is refused.
    subject : str, optional
        Default the reconstructor's ``subject`` entry, else the world's first subject.
    n_test : int
        Held-out shared test scans scored (the acceptance figures).
    num_inference_steps : int, optional
        Default the reconstructor's.
    alphas : sequence of float
        Control scales of the sweep figure.
    n_show, n_swap : int
        Scans in the sweep figure; layout × semantic sources in the swap grid.
    kappas, etas, strength : NeuralDiffuser only
        Feature-guidance scales κ and strengths η swept (κ = 0 once), and the img2img strength.
    iterations, lr : MindDiffuser only
        Stage 2's Adam iterations and learning rate (each iteration samples every scan once more, with
        gradients: about 0.6 s per scan per iteration on one toy-world CPU thread, twice with the
        random-``z`` ablation).
    seed : int
    world : ToyWorld, optional
        Skip rebuilding the world.
    world_preset : {"default", "smoke"}, optional
        Override the reconstructor's world.
    threads : int, optional
        Torch threads while it runs (restored after). The toy models are too small to gain from
        more than one, and on a busy machine extra OpenMP threads can make every step tens of
        times slower; None keeps the current setting.
    progress : bool

    Returns
    -------
    dict
        The contents of ``report.json``. NeuroPictor: the figures of :func:`evaluate_reconstructor`
        (``alpha``, ``guidance``, ``swap``); ``alpha["1"]`` equals what ``brainrecon evaluate
        OUT/results`` reports (same 8-bit images, same scoring). NeuralDiffuser: ``kappa_eta`` (one row
        per setting), ``baselines`` (``mean_image``, ``shuffled_scan``), ``retrieval``; ``results/``
        holds the κ, η = ``kappas[-1]``, ``etas[0]`` images. MindDiffuser: ``stages`` (one row per
        :data:`~brainrecon.sampling.two_stage.STAGE_ROWS` entry: PixCorr, SSIM, AlexNet-2, CLIP, the
        judge's position error, colour and category), ``baselines``, ``loss_by_iteration``,
        ``decoders`` (the fit's ``metrics.json`` when the folder has it); ``results/`` holds stage 2.
        CAD: ``reconstruction``, ``shuffled_scan``, ``mean_image`` (``{metric: value}``), ``run`` (the
        training run's ``metrics.json``); ``results/`` holds the reconstructions.
        All: ``method``, file names, timings.

    Raises
    ------
    InvalidInputError
        A bad argument (``n_test`` < 2, ``num_inference_steps`` < 1, an unknown subject, a subject the
        reconstructor has no decoders for (NeuralDiffuser, MindDiffuser), ``iterations`` < 0, an output
        folder that cannot be written...). Every argument is checked before any work is done (the
        subject against the reconstructor's world, read from its JSON files before any model loads).
    DataNotFoundError, CheckpointError
        The reconstructor folder is missing, or one of its files is unreadable (named).
    """
    _check_arguments(out_dir, n_test, num_inference_steps, alphas, n_show, n_swap, seed, world_preset, threads)
    check_choice("method (--method)", method, (None, *SHIPPED_RECONSTRUCTORS))
    _check_guidance_sweep(kappas, etas, strength)
    check_range("iterations", iterations, 0)
    check_range("lr", lr, 1e-12, None, float)
    info = reconstructor_info(reconstructor, method or "neuropictor")
    kind = info.get("method", "neuropictor")
    if method is not None and kind != method:
        raise InvalidInputError(f"--method {method} but {info['path']} holds a {kind} reconstructor; drop --method "
                                f"or pass a {method} folder.")
    if kind not in SHIPPED_RECONSTRUCTORS:
        raise InvalidInputError(f"the demo knows {', '.join(SHIPPED_RECONSTRUCTORS)}; {info['path']} is {kind}.")
    world, subject = _world_and_subject(info, world, world_preset, subject)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        if kind == "cad":
            return _write_cad_report(out_dir, info["path"], subject, n_test, num_inference_steps, seed, world,
                                     progress)
        if kind == "minddiffuser":
            return _write_minddiffuser_report(out_dir, info["path"], subject, n_test, num_inference_steps,
                                              iterations, lr, seed, world, progress)
        if kind == "neuraldiffuser":
            return _write_neuraldiffuser_report(out_dir, info["path"], subject, n_test, num_inference_steps,
                                                kappas, etas, strength, seed, world, progress)
        return _write_report(out_dir, info["path"], subject, n_test, num_inference_steps, alphas, n_show, n_swap,
                             seed, world, progress)
    finally:
        torch.set_num_threads(before)


def _check_guidance_sweep(kappas, etas, strength) -> None:
    for name, values, lo, hi in (("kappas", kappas, 0.0, None), ("etas", etas, 0.0, 1.0)):
        if not len(values):
            raise InvalidInputError(f"'{name}' must hold at least one value.")
        for v in values:
            check_range(name, v, lo, hi, float)
    check_range("strength", strength, 1e-6, 1.0, float)


def _check_arguments(out_dir, n_test, num_inference_steps, alphas, n_show, n_swap, seed, world_preset,
                     threads) -> None:
    """Every argument of :func:`write_demo_report` that can be checked without loading anything."""
    check_output_dir(out_dir, "the demo's output folder (--out)")
    check_range("n_test", n_test, 2)           # the suite compares pairs of scans
    if num_inference_steps is not None:
        check_range("num_inference_steps (--steps)", num_inference_steps, 1)
    check_range("n_show", n_show, 1)
    check_range("n_swap", n_swap, 1)
    check_range("seed", seed, 0)
    if threads is not None:
        check_range("threads", threads, 1)
    check_choice("world_preset (--world)", world_preset, (None, "default", "smoke"))
    bad = [a for a in alphas if not isinstance(a, numbers.Real) or not math.isfinite(a)]
    if not len(alphas) or bad:
        raise InvalidInputError(f"'alphas' must be one or more finite control scales; {list(alphas)!r} was provided.")


def _world_and_subject(info, world, world_preset, subject):
    """``(world or its config, subject)``, the subject checked against it; reads JSON only, builds nothing."""
    if world is None:
        world = demo_world_config(info, world_preset)
        if isinstance(world, str):                  # a saved world: cheap to load, and it knows its subjects
            world = load_toyworld(world)
    config = getattr(world, "config", world)
    fitted = info.get("subject")
    subject = subject or fitted or config.subject_ids[0]
    config.check_subject(subject, "subject (--subject)")
    if info.get("method") in _ONE_SUBJECT and fitted and subject != fitted:
        raise InvalidInputError(f"{info['path']} holds {info['method']} decoders fitted on {fitted}'s voxels only; "
                                f"there are none for {subject}. Drop --subject, or fit {subject}'s: brainrecon "
                                f"train {info['method']} --subject {subject} --out RUN, then --reconstructor "
                                "RUN/reconstructor.")
    return world, subject


#: Methods whose reconstructor reads one subject's voxels (their decoders fit that subject alone).
_ONE_SUBJECT = ("neuraldiffuser", "minddiffuser", "cad")


def _start_report(reconstructor, world, total: int, progress: bool) -> tuple:
    """Every report's first two steps: a progress bar of ``total`` steps, the loaded reconstructor, the built
    world (``(bar, pipe, world)``)."""
    bar = tqdm(total=total, desc="demo", disable=not progress)
    bar.set_postfix_str("loading the reconstructor")
    pipe = load_reconstructor(reconstructor)
    bar.update()
    bar.set_postfix_str("building the toy world")
    if isinstance(world, ToyWorldConfig):
        world = make_toyworld(world, progress=progress)
    return bar, pipe, world


def _test_data(pipe, world, subject: str, n_test: int, num_inference_steps) -> tuple:
    """The test scans, their images, the sampling steps and the subject's training images
    (``(data, targets, steps, train)``), as every method's report starts from them."""
    data = make_test_maps(pipe, world, subject, n_test)
    steps = int(num_inference_steps or pipe.config.default_num_inference_steps)
    train = world.scenes.images[np.asarray(world.subjects[subject].train_images)]
    return data, data["targets"], steps, train


def _save_figures(out: Path, figures: dict) -> None:
    for name, fig in figures.items():
        save_figure(fig, out / name)


def _write_report(out_dir, reconstructor, subject, n_test, num_inference_steps, alphas, n_show, n_swap, seed,
                  world, progress) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    bar, pipe, world = _start_report(reconstructor, world, 5, progress)
    bar.update()
    bar.set_postfix_str(f"scoring {n_test} test scans of {subject}")
    res = evaluate_reconstructor(pipe, world, subject, n_test=n_test, seed=seed,
                                 num_inference_steps=num_inference_steps, progress=progress)
    data, imgs, m = res["data"], res["images"], res["metrics"]
    bar.update()
    bar.set_postfix_str("α sweep and swap grid")
    steps = m["num_inference_steps"]
    k = min(n_show, len(data["maps"]))
    sweep = sweep_control_scale(pipe, data["maps"][:k], alphas=alphas, seed=seed, num_inference_steps=steps,
                                progress=False)
    partners = res["swap_partners"]
    a_idx = list(range(min(n_swap, len(data["maps"]))))
    b_idx = [int(partners[i]) for i in a_idx]
    grid = swap_grid(pipe, data["maps"][a_idx], data["maps"][b_idx], seed=seed, num_inference_steps=steps)
    bar.update()
    bar.set_postfix_str("writing figures")
    rows = {name: imgs[name] for name in imgs if name != "swap"}
    figures = {
        "reconstructions.png": plot_reconstruction_grid(rows, data["targets"], n=min(8, len(data["maps"]))),
        "alpha_sweep.png": plot_control_sweep(sweep, data["targets"][:k]),
        "swap_grid.png": plot_swap_grid(grid, data["targets"][a_idx], data["targets"][b_idx]),
    }
    _save_figures(out, figures)
    alpha1 = imgs[f"alpha={1.0:g}"] if f"alpha={1.0:g}" in imgs else next(iter(imgs.values()))
    save_results(out / "results", alpha1, data["targets"], method="neuropictor", world="toy", subject=subject,
                 image_ids=data["image_keys"], toyworld=world.config, attributes=data["attributes"])
    with atomic_file(out / "figures.csv", "w") as f:
        res["table"].to_csv(f, index=False)
    report = {**m, "method": "neuropictor", "reconstructor": pipe.info.get("path"),
              "alphas_swept": [float(a) for a in alphas],
              "files": sorted(figures) + ["figures.csv", "results/"], "seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    bar.update()
    bar.close()
    return report


def _write_neuraldiffuser_report(out_dir, reconstructor, subject, n_test, num_inference_steps, kappas, etas,
                                 strength, seed, world, progress) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    # the backbone is attached: guidance and retrieval read it
    bar, pipe, world = _start_report(reconstructor, world, 5, progress)
    data, targets, steps, train = _test_data(pipe, world, subject, n_test, num_inference_steps)
    bar.update()
    bar.set_postfix_str(f"κ × η on {len(targets)} test scans of {subject}")
    sweep = sweep_feature_guidance(pipe, data["maps"], targets, kappas=kappas, etas=etas, strength=strength,
                                   seed=seed, metrics=KAPPA_ETA_METRICS, num_inference_steps=steps, progress=False)
    bar.update()
    bar.set_postfix_str("baselines and retrieval")
    shown = (float(kappas[-1]), float(etas[0]))            # the paper's setting: the largest κ at η = etas[0]
    chosen = sweep["images"][shown]
    baselines = score_trivial_baselines(chosen, targets, train, metrics=KAPPA_ETA_METRICS)
    retrieval = evaluate_retrieval(pipe, data)
    retrieval.pop("table")
    bar.update()
    bar.set_postfix_str("writing figures")
    k = min(8, len(targets))
    rows = {feature_guidance_label(kk, e): imgs[:k] for (kk, e), imgs in sweep["images"].items()}
    rows["training mean image"] = baselines.pop("mean_image_pixels")[None].expand(k, -1, -1, -1)
    figures = {"reconstructions.png": plot_reconstruction_grid(rows, targets[:k], n=k),
               "kappa_eta.png": plot_kappa_eta(sweep["rows"], baselines)}
    _save_figures(out, figures)
    save_results(out / "results", chosen, targets, method="neuraldiffuser", world="toy", subject=subject,
                 image_ids=data["image_keys"], toyworld=world.config, attributes=data["attributes"],
                 extra={"feature_guidance_scale": shown[0], "feature_guidance_strength": shown[1],
                        "strength": float(strength), "num_inference_steps": steps})
    report = {"method": "neuraldiffuser", "reconstructor": pipe.info.get("path"), "subject": subject,
              "n_test": int(len(targets)), "seed": int(seed), "num_inference_steps": steps,
              "strength": float(strength), "guidance_scale": float(pipe.config.default_guidance_scale),
              "kappa_eta": sweep["rows"], "baselines": baselines, "retrieval": retrieval,
              "results_setting": {"kappa": shown[0], "eta": shown[1]},
              "files": sorted(figures) + ["results/"], "seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    bar.update()
    bar.close()
    return report


def _write_minddiffuser_report(out_dir, reconstructor, subject, n_test, num_inference_steps, iterations, lr, seed,
                               world, progress) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    # the backbone is attached: stage 2 reads D and the image encoder
    bar, pipe, world = _start_report(reconstructor, world, 4, progress)
    data, targets, steps, train = _test_data(pipe, world, subject, n_test, num_inference_steps)
    judge = pipe.conditioner._backbone[0].attribute_classifier
    bar.update()
    bar.set_postfix_str(f"stages 1 and 2 ({iterations} iterations) on {len(targets)} test scans of {subject}")
    res = compare_stages(pipe, data, iterations=iterations, lr=lr, seed=seed, train_images=train, judge=judge,
                         num_inference_steps=steps, progress=progress)
    bar.update()
    bar.set_postfix_str("writing figures")
    k = min(8, len(targets))
    rows = {name: res["images"][name][:k] for name in STAGE_ROWS if name in res["images"]}
    rows["training mean image"] = res["mean_image_pixels"][None].expand(k, -1, -1, -1)
    figures = {"reconstructions.png": plot_reconstruction_grid(rows, targets[:k], n=k, titles=data["captions"][:k]),
               "stage_losses.png": plot_stage_losses(res["losses"])}
    _save_figures(out, figures)
    save_results(out / "results", res["images"]["stage 2"], targets, method="minddiffuser", world="toy",
                 subject=subject, image_ids=data["image_keys"], toyworld=world.config, attributes=data["attributes"],
                 extra={"iterations": int(iterations), "lr": float(lr), "num_inference_steps": steps})
    fit = run_record(pipe.info, "metrics.json")
    report = {"method": "minddiffuser", "reconstructor": pipe.info.get("path"), "subject": subject,
              "n_test": int(len(targets)), "seed": int(seed), "num_inference_steps": steps,
              "strength": float(pipe.conditioner.default_strength), "iterations": int(iterations), "lr": float(lr),
              "stages": res["rows"], "baselines": res["baselines"],
              "loss_by_iteration": {k: [float(v) for v in L.mean(1)] for k, L in res["losses"].items()},
              "decoders": read_json(fit, "Copy the reconstructor folder again.") if fit else None,
              "files": sorted(figures) + ["results/"], "seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    bar.update()
    bar.close()
    return report


def _write_cad_report(out_dir, reconstructor, subject, n_test, num_inference_steps, seed, world, progress) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    bar, pipe, world = _start_report(reconstructor, world, 4, progress)
    data, targets, steps, train = _test_data(pipe, world, subject, n_test, num_inference_steps)
    bar.update()
    bar.set_postfix_str(f"reconstructing {len(targets)} test scans of {subject}")
    images = reconstruct(pipe, data, seed=seed, num_inference_steps=steps, progress=False)["images"]
    scores = score_reconstructions(images, data, train, judge=load_backbone("toy").attribute_classifier)
    bar.update()
    bar.set_postfix_str("writing figures")
    k = min(8, len(targets))
    mean = make_mean_image(train)
    rows = {"CAD": images[:k], "training mean image": mean[None].expand(k, -1, -1, -1)}
    figures = {"reconstructions.png": plot_reconstruction_grid(rows, targets[:k], n=k, titles=data["captions"][:k])}
    _save_figures(out, figures)
    save_results(out / "results", images, targets, method="cad", world="toy", subject=subject,
                 image_ids=data["image_keys"], toyworld=world.config, attributes=data["attributes"],
                 extra={"num_inference_steps": steps, "guidance_scale": float(pipe.config.default_guidance_scale)})
    fit = run_record(pipe.info, "metrics.json")
    report = {"method": "cad", "reconstructor": pipe.info.get("path"), "subject": subject,
              "n_test": int(len(targets)), "seed": int(seed), "num_inference_steps": steps,
              "guidance_scale": float(pipe.config.default_guidance_scale), **scores,
              "run": read_json(fit, "Copy the reconstructor folder again.") if fit else None,
              "files": sorted(figures) + ["results/"], "seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    bar.update()
    bar.close()
    return report
