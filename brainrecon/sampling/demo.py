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

import torch
from tqdm.auto import tqdm

from ..data.toystore import load_toyworld
from ..data.toyworld import ToyWorldConfig, make_toyworld
from ..errors import InvalidInputError, check_choice, check_range
from ..io import atomic_file, check_output_dir, read_json, write_json
from ..metrics import plot_reconstruction_grid, save_results
from ..plotting import save_figure
from .explore import evaluate_reconstructor, plot_control_sweep, plot_swap_grid, swap_grid, sweep_control_scale
from .folders import reconstructor_info
from .pipeline import load_reconstructor

__all__ = ["write_demo_report", "make_demo_world", "demo_world_config"]


def demo_world_config(pipe, preset: str | None = None):
    """The config of the toy world a reconstructor was trained on, or the path of a saved world.

    Looked up in order: ``preset`` (``"default"``/``"smoke"``), the folder's ``toyworld`` entry
    (``ToyWorldConfig`` as a dict, or ``{"path": saved world}``), the ``world`` of its ``run.json``
    (written by the training stages), else the default world. Nothing is built or loaded.

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
    run = Path(info.get("path", ".")) / "run.json"
    if spec is None and run.is_file():
        spec = read_json(run, "Copy the reconstructor folder again, or pass the world preset (--world).").get("world")
    if preset == "smoke":
        return ToyWorldConfig.smoke()
    if preset == "default" or not isinstance(spec, dict) or "nsd_root" in spec:
        return ToyWorldConfig()
    if "path" in spec:
        return str(spec["path"])
    spec = dict(spec.get("config", spec))
    return ToyWorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def make_demo_world(pipe, preset: str | None = None, progress: bool = True):
    """The toy world a reconstructor was trained on (built, or loaded; see :func:`demo_world_config`)."""
    config = demo_world_config(pipe, preset)
    if isinstance(config, str):
        return load_toyworld(config)
    return make_toyworld(config, progress=progress)


def write_demo_report(out_dir, reconstructor=None, subject: str | None = None, n_test: int = 24,
                      num_inference_steps: int | None = None, alphas=(0.0, 0.5, 1.0, 1.5), n_show: int = 6,
                      n_swap: int = 4, seed: int = 0, world=None, world_preset: str | None = None,
                      threads: int | None = 1, progress: bool = True) -> dict:
    """Reconstruct, sweep α, swap, score; write PNG figures and ``report.json`` to ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
    reconstructor : path-like, optional
        A reconstructor folder (default the shipped toy one).
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
        The contents of ``report.json``: the figures of :func:`evaluate_reconstructor`
        (``alpha``, ``guidance``, ``swap``), file names, timings. ``alpha["1"]`` equals what
        ``brainrecon evaluate OUT/results`` reports (same 8-bit images, same scoring).

    Raises
    ------
    InvalidInputError
        A bad argument (``n_test`` < 2, ``num_inference_steps`` < 1, an unknown subject, an output
        folder that cannot be written...). Every argument is checked before any work is done (the
        subject against the reconstructor's world, read from its JSON files before any model loads).
    DataNotFoundError, CheckpointError
        The reconstructor folder is missing, or one of its files is unreadable (named).
    """
    _check_arguments(out_dir, n_test, num_inference_steps, alphas, n_show, n_swap, seed, world_preset, threads)
    world, subject = _world_and_subject(reconstructor, world, world_preset, subject)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _write_report(out_dir, reconstructor, subject, n_test, num_inference_steps, alphas, n_show, n_swap,
                             seed, world, progress)
    finally:
        torch.set_num_threads(before)


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


def _world_and_subject(reconstructor, world, world_preset, subject):
    """``(world or its config, subject)``, the subject checked against it; reads JSON only, builds nothing."""
    info = reconstructor_info(reconstructor)
    if world is None:
        world = demo_world_config(info, world_preset)
        if isinstance(world, str):                  # a saved world: cheap to load, and it knows its subjects
            world = load_toyworld(world)
    config = getattr(world, "config", world)
    subject = subject or info.get("subject") or config.subject_ids[0]
    config.check_subject(subject, "subject (--subject)")
    return world, subject


def _write_report(out_dir, reconstructor, subject, n_test, num_inference_steps, alphas, n_show, n_swap, seed,
                  world, progress) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    bar = tqdm(total=5, desc="demo", disable=not progress)
    bar.set_postfix_str("loading the reconstructor")
    pipe = load_reconstructor(reconstructor)
    bar.update()
    bar.set_postfix_str("building the toy world")
    if isinstance(world, ToyWorldConfig):
        world = make_toyworld(world, progress=progress)
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
    for name, fig in figures.items():
        save_figure(fig, out / name)
    alpha1 = imgs[f"alpha={1.0:g}"] if f"alpha={1.0:g}" in imgs else next(iter(imgs.values()))
    save_results(out / "results", alpha1, data["targets"], method="neuropictor", world="toy", subject=subject,
                 image_ids=data["image_keys"], toyworld=world.config, attributes=data["attributes"])
    with atomic_file(out / "figures.csv", "w") as f:
        res["table"].to_csv(f, index=False)
    report = {**m, "reconstructor": pipe.info.get("path"), "alphas_swept": [float(a) for a in alphas],
              "files": sorted(figures) + ["figures.csv", "results/"], "seconds": time.perf_counter() - t0}
    write_json(out / "report.json", report)
    bar.update()
    bar.close()
    return report
