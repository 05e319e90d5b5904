"""The ``brainrecon`` command line.

Every subcommand is a thin wrapper over a public function, so anything the command line
does can also be done (and explored) from Python or a notebook. The heavy imports (torch, the
models) are made inside each command so that ``brainrecon --help`` answers at once. Every
argument is checked before any work starts; a bad one prints brainrecon's message (what is
wrong, how to fix it) and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

from . import __version__
from .errors import BrainreconError, DataNotFoundError, check_range
from .io import check_output_dir

__all__ = ["main", "build_parser"]

_DESCRIPTION = """\
brainrecon reconstructs the images a person saw from their fMRI responses with
diffusion models (NeuroPictor, NeuralDiffuser, MindDiffuser, Contrast-Attend-Diffuse).

It runs out of the box on an embedded toy world (procedural scenes, a simulated
multi-subject fMRI experiment on the fsaverage5 cortical surface, small pretrained
backbones) and on the Natural Scenes Dataset with Stable Diffusion 2.1 from local
folders. brainrecon never downloads data or weights.
"""

_EPILOG = """\
examples:
  brainrecon toyworld --out brainrecon-out          build the toy world, write overview figures
  brainrecon toyworld --preset smoke --out /tmp/tw  a seconds-sized world for trying things
  brainrecon card nsd                               how to lay out NSD for brainrecon
  brainrecon info                                   versions and what brainrecon can find
  brainrecon demo --out demo-out                    NeuroPictor on held-out toy scans: alpha sweep, swap, report
  brainrecon demo --method neuraldiffuser           NeuralDiffuser: feature guidance kappa x eta, retrieval
  brainrecon demo --method minddiffuser --n-test 12 MindDiffuser: stage 1 vs stage 2 (latent optimisation)
  brainrecon demo --method cad                      Contrast, Attend and Diffuse: reconstructions, n-way, baselines
  brainrecon evaluate runs/recon                    the field's metrics on a results folder
  brainrecon train neuropictor --out runs/np         NeuroPictor stages i-iii in the toy world
  brainrecon train neuraldiffuser --out runs/nd      NeuralDiffuser's decoders (toy world)
  brainrecon train minddiffuser --out runs/md        MindDiffuser's ridge decoders (toy world, ~1 min)
  brainrecon train cad --out runs/cad                Contrast, Attend and Diffuse: FRL phases 1-2, LDM tuning
  brainrecon lab                                    JupyterLab on the notebooks (127.0.0.1:8888)
  brainrecon explore                                the explorer page in Voila (127.0.0.1:8866)
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (exposed for documentation and tests)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="brainrecon", description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=fmt)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "toyworld", formatter_class=fmt,
        help="build the embedded toy world and write its overview figures",
        description=textwrap.dedent("""\
            Build the embedded toy world (scenes with captions and a simulated fMRI
            experiment on fsaverage5), save it to OUT/toyworld, and write overview
            figures to OUT: example scenes with captions, every subject's response
            flatmap, per-area noise ceilings, and overview.json with the figures' numbers.
            See data_cards/toyworld.md."""))
    p.add_argument("--out", default="brainrecon-out", help="output folder (default: %(default)s)")
    p.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="world size: 'default' (the documented world) or 'smoke' (seconds)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--resolution", type=int, default=128, help="flatmap side in pixels (64-256)")

    p = sub.add_parser("card", help="print a data or model card (nsd, toyworld, ...)",
                       description="Print one of brainrecon's data/model cards.")
    p.add_argument("name", nargs="?", default=None, help="card name; omit to list them")

    sub.add_parser("info", help="print versions and what brainrecon can find locally",
                   description="Versions, threads, accelerator, and data/weight locations.")

    p = sub.add_parser(
        "backbones", formatter_class=fmt, help="train or inspect the toy backbones",
        description="The toy world's small Stable-Diffusion parts (VAE, toy CLIP, U-Net).")
    bsub = p.add_subparsers(dest="backbones_command", metavar="ACTION")
    t = bsub.add_parser("train", help="train the toy backbones from scratch (resumable)",
                        description="Train toy CLIP, VAE, U-Net and the attribute classifier. "
                                    "Rerunning with the same --out resumes from the last checkpoint.")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--preset", choices=("quick", "default"), default="default",
                   help="'quick' trains in seconds (tests); 'default' is the shipped recipe")
    t.add_argument("--seed", type=int, default=None)

    p = sub.add_parser(
        "evaluate", formatter_class=fmt, help="score a folder of reconstructions with the field's metrics",
        description=textwrap.dedent("""\
            Score a results folder (reconstructions.npy + targets.npy, optional image_ids,
            brain embeddings, measured responses; see data_cards/metrics.md) with PixCorr,
            SSIM, two-way identification, EffNet/SwAV distances, retrieval, brain correlation
            and toy attribute scores. Prints the table and writes metrics.json.
            Real networks load from --weights (never downloaded); without them the toy
            feature set stands in (documented mapping in the card)."""))
    p.add_argument("results_dir", metavar="DIR", help="results folder")
    p.add_argument("--weights", default=None, metavar="FOLDER",
                   help="folder with the real networks' weights (data_cards/metrics.md)")
    p.add_argument("--out", default=None, help="where to write the JSON (default: DIR/metrics.json)")
    p.add_argument("--feature-set", dest="feature_set", choices=("auto", "real", "toy"), default="auto",
                   help="'real' networks, the 'toy' CLIP stand-ins, or 'auto' (real when weights load)")
    p.add_argument("--protocol", choices=("mindeye", "neuropictor", "brain-diffuser"), default="mindeye",
                   help="resize chain and SSIM variant of the low-level metrics (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device for the networks (default: %(default)s)")

    p = sub.add_parser(
        "demo", formatter_class=fmt, help="reconstruct held-out toy scans with a shipped reconstructor",
        description=textwrap.dedent("""\
            Load a reconstructor (default: the shipped toy one of --method, in
            brainrecon/weights/), rebuild its toy world and reconstruct a subject's held-out
            shared test scans.

            neuropictor (default): sweep the control scale alpha, show a semantic swap, and
            write OUT/reconstructions.png, alpha_sweep.png, swap_grid.png, figures.csv,
            report.json (alpha=1 vs 0, CFG 0 vs default, swap figures) and results/ (for
            `brainrecon evaluate`). About a minute on 2 CPU cores (toy world).

            neuraldiffuser: Algorithm 1 (img2img from the decoded latent at strength 0.75, CFG
            on the decoded text condition) at feature-guidance scales kappa 0, 1e-3, 1e-2 and
            strengths eta 0.2, 1 (the paper's Tab. 2), beside the training-mean-image and
            shuffled-scan baselines, plus brain <-> image retrieval; writes
            OUT/reconstructions.png, kappa_eta.png, report.json and results/ (kappa 1e-2,
            eta 0.2).

            minddiffuser: stage 1 (img2img from the decoded latent under the decoded text
            condition), stage 2 (--iterations of Adam on z, as the official code, against
            the decoded image-encoder features, Eq. 5) and stage 2 from a random z (the paper's
            ablation), beside the same baselines; writes OUT/reconstructions.png,
            stage_losses.png, report.json and results/ (stage 2). About 0.6 s per scan per
            iteration per run on one thread: --n-test 12 --iterations 10 takes ~2.5 min.

            cad: the FRL encoder's reconstructions (cross-attention + time-embedding conditioning,
            the paper's guidance 1), scored by the standard table with n-way top-1 (10-way in the
            toy world) and the toy judge, beside the shuffled-scan and training-mean baselines;
            writes OUT/reconstructions.png, report.json and results/."""))
    p.add_argument("--out", default="brainrecon-demo", help="output folder (default: %(default)s)")
    p.add_argument("--method", choices=("neuropictor", "neuraldiffuser", "minddiffuser", "cad"), default=None,
                   help="which shipped reconstructor (default neuropictor); with --reconstructor, "
                        "the folder's own method (a different --method is refused)")
    p.add_argument("--reconstructor", default=None, metavar="PATH",
                   help="reconstructor folder (model_index.json, conditioner/, backbone.json); default the "
                        "shipped toy one")
    p.add_argument("--subject", default=None, help="toy subject (default: the reconstructor's)")
    p.add_argument("--n-test", dest="n_test", type=int, default=24, help="test scans scored (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=10,
                   help="minddiffuser: stage-2 iterations (default: %(default)s; the paper runs 300)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the reconstructor's)")
    p.add_argument("--world", choices=("default", "smoke"), default=None,
                   help="toy world preset (default: the one the reconstructor names, else 'default')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the toy models gain nothing from more, and a busy "
                        "machine makes extra threads much slower)")

    p = sub.add_parser("train", formatter_class=fmt, help="train a reconstruction method (resumable)",
                       description="Train a method's stages in the toy world.")
    tsub = p.add_subparsers(dest="train_command", metavar="METHOD")
    t = tsub.add_parser(
        "neuropictor", formatter_class=fmt, help="NeuroPictor stages i-iii and their comparison runs",
        description=textwrap.dedent("""\
            Calibrated encoding -> multi-subject pre-training (held-out subject left out) ->
            refining SUBJECT, plus the from-scratch baseline and the held-out subject refined on
            a fraction of its scans (brainrecon.training.train_toy_reconstructor). Each run is a
            folder under OUT; rerunning the same command resumes. See data_cards/neuropictor_toy.md."""))
    t.add_argument("--out", default="runs/neuropictor_toy", help="output folder (default: %(default)s)")
    t.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="'default': the shipped recipe (~25 min on a CPU); 'smoke': seconds")
    t.add_argument("--subject", default="subj01")
    t.add_argument("--heldout", default="auto",
                   help="subject left out of stages i-ii ('auto': the world's last, subj08 by default; 'none': none)")
    t.add_argument("--heldout-fraction", dest="heldout_fraction", type=float, default=0.1)
    t.add_argument("--no-baselines", dest="baselines", action="store_false", help="skip the scratch runs")
    t.add_argument("--ship-to", dest="ship_to", default=None, metavar="DIR",
                   help="copy the refined reconstructor (model/ + backbone.json) here")
    t.add_argument("--threads", type=int, default=1)
    t = tsub.add_parser(
        "neuraldiffuser", formatter_class=fmt, help="NeuralDiffuser's voxel decoders: pre-training and fine-tuning",
        description=textwrap.dedent("""\
            Multi-subject pre-training of the voxel encoders and the text / latent / image-feature
            decoders on every subject but SUBJECT, then fine-tuning on SUBJECT
            (brainrecon.training.train_neuraldiffuser). Writes OUT/reconstructor/ (load it with
            brainrecon.sampling.load_reconstructor) and OUT/metrics.json; rerunning resumes.
            The shipped brainrecon/weights/neuraldiffuser_toy is the default preset's run, shipped
            with --ship-to (about 5 min on one CPU thread)."""))
    t.add_argument("--out", default="runs/neuraldiffuser_toy", help="output folder (default: %(default)s)")
    t.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="'default': the toy recipe; 'smoke': seconds")
    t.add_argument("--subject", default="subj01")
    t.add_argument("--prior-weight", dest="prior_weight", type=float, default=0.0, metavar="ALPHA",
                   help="alpha of Eq. 3: > 0 adds the diffusion prior after the text decoder (MindEye: 30); "
                        "0 (default) regresses the text condition by MSE")
    t.add_argument("--ship-to", dest="ship_to", default=None, metavar="DIR",
                   help="copy the reconstructor here with only SUBJECT's voxel encoder (ship_neuraldiffuser)")
    t.add_argument("--threads", type=int, default=1)

    t = tsub.add_parser(
        "minddiffuser", formatter_class=fmt, help="MindDiffuser's ridge decoders (text, latent, image features)",
        description=textwrap.dedent("""\
            Fit SUBJECT's ridge decoders from voxels to the text condition, the VAE latent and the
            image encoder's shallow layers (himalaya, penalties by cross-validation; the layer
            features keep the 25 % of dimensions best predicted in 5-fold cross-validation), as
            brainrecon.training.train_minddiffuser. Writes OUT/reconstructor/ (stage 1:
            load_reconstructor(...)(voxels); stage 2: brainrecon.sampling.optimise_latents) and
            OUT/metrics.json; rerunning resumes with the decoders not yet fitted.
            See data_cards/minddiffuser_toy.md."""))
    t.add_argument("--out", default="runs/minddiffuser_toy", help="output folder (default: %(default)s)")
    t.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="'default': the toy recipe (about a minute); 'smoke': seconds")
    t.add_argument("--subject", default="subj01")
    t.add_argument("--feature-layers", dest="feature_layers", type=int, nargs="+", default=None, metavar="L",
                   help="image-encoder layers stage 2 aligns (default: the preset's, 1 2)")
    t.add_argument("--backend", default="numpy", choices=("numpy", "torch", "torch_cuda"),
                   help="himalaya backend of the ridge fits (default: %(default)s)")
    t.add_argument("--threads", type=int, default=1)

    t = tsub.add_parser(
        "cad", formatter_class=fmt, help="Contrast, Attend and Diffuse: DC-MAE, cross-modal tuning, LDM tuning",
        description=textwrap.dedent("""\
            FRL phase 1 (the double-contrastive MAE on SUBJECT's voxel vectors), phase 2 (tuned beside
            an image MAE through cross-attention; the toy world trains a small image MAE first, NSD
            needs --image-mae) and phase 3 (the FRL encoder conditions the U-Net through
            cross-attention and the time embedding; encoder and cross-attention heads tuned on the
            denoising loss), as brainrecon.training.cad_ldm.train_cad. Writes OUT/reconstructor/
            (load_reconstructor(...)(voxels)) and OUT/metrics.json; rerunning resumes.
            See data_cards/cad_toy.md."""))
    t.add_argument("--out", default="runs/cad_toy", help="output folder (default: %(default)s)")
    t.add_argument("--preset", choices=("default", "smoke"), default="default",
                   help="'default': the toy recipe (about 40 min on one CPU thread); 'smoke': seconds")
    t.add_argument("--subject", default="subj01")
    t.add_argument("--no-contrast", dest="contrast", action="store_false",
                   help="phase 1 as a plain MAE (cross_weight = self_weight = 0): the ablation")
    t.add_argument("--phase2-steps", dest="phase2_steps", type=int, default=None,
                   help="phase 2's steps (0 skips it: the ablation; default: the preset's)")
    t.add_argument("--image-mae", dest="image_mae", default=None, metavar="DIR",
                   help="a local ViTMAEForPreTraining folder for phase 2 (NSD: facebook/vit-mae-base)")
    t.add_argument("--ship-to", dest="ship_to", default=None, metavar="DIR",
                   help="copy the reconstructor here, its weights in fp16 (ship_cad)")
    t.add_argument("--threads", type=int, default=1)

    p = sub.add_parser(
        "lab", formatter_class=fmt, help="start JupyterLab on the notebooks (127.0.0.1)",
        description=textwrap.dedent("""\
            Start JupyterLab on brainrecon's notebooks folder, listening on 127.0.0.1 only. The
            notebooks are jupytext percent files (notebooks/*.py) and open as notebooks. Open the
            URL it prints (with its token) in a browser; Ctrl-C stops it."""))
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--print-command", dest="print_command", action="store_true",
                   help="print the command instead of running it")

    p = sub.add_parser(
        "explore", formatter_class=fmt, help="serve the explorer page with Voila (127.0.0.1)",
        description=textwrap.dedent("""\
            Serve notebooks/explorer.py as a single Voila page on 127.0.0.1: pick a subject, a
            held-out test scan and a method; see the seen image, the reconstruction and the input
            flatmap; drive alpha, CFG and the semantic swap; compare every method on the same scan.
            Open http://127.0.0.1:PORT/ in a browser; Ctrl-C stops it."""))
    p.add_argument("--port", type=int, default=8866)
    p.add_argument("--reconstructor", action="append", default=None, metavar="PATH",
                   help="a reconstructor folder (repeat for several methods or subjects; default the shipped toy one)")
    p.add_argument("--n-test", dest="n_test", type=int, default=12, help="test scans offered per subject")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: each reconstructor's)")
    p.add_argument("--out", default="brainrecon-out/explorer", help="where the page's notebook is written")
    p.add_argument("--print-command", dest="print_command", action="store_true",
                   help="print the command instead of running it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``brainrecon`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _COMMANDS[args.command](args) or 0
    except BrainreconError as err:
        print(f"brainrecon {args.command}: {err}", file=sys.stderr)
        return 2


#: Flatmap sides ``brainrecon toyworld --resolution`` accepts (as its help says).
TOYWORLD_RESOLUTIONS = (64, 256)


def _check_seed(seed) -> None:
    if seed is not None:
        check_range("--seed", seed, 0)


def _cmd_toyworld(args) -> int:
    check_range("--resolution", args.resolution, *TOYWORLD_RESOLUTIONS)
    _check_seed(args.seed)
    check_output_dir(args.out, "--out")
    from .data.toyworld import ToyWorldConfig, make_toyworld, save_toyworld
    from .plotting import write_toyworld_overview

    config = ToyWorldConfig.smoke() if args.preset == "smoke" else ToyWorldConfig()
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    out = Path(args.out)
    world = make_toyworld(config, progress=True)
    save_toyworld(world, out / "toyworld")
    summary = write_toyworld_overview(world, out, resolution=args.resolution)
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}/ (toyworld/, overview figures, overview.json)")
    return 0


def _cmd_card(args) -> int:
    from .cards import list_cards, read_card

    if args.name is None:
        print("\n".join(list_cards()))
    else:
        print(read_card(args.name))
    return 0


def _cmd_info(args) -> int:
    import torch

    info = {
        "brainrecon": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "BRAINRECON_NSD": os.environ.get("BRAINRECON_NSD"),
    }
    for mod in ("diffusers", "transformers", "accelerate", "nilearn", "neuropythy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    print(json.dumps(info, indent=2))
    return 0


def _cmd_backbones(args) -> int:
    if args.backbones_command != "train":
        build_parser().parse_args(["backbones", "--help"])
        return 0
    _check_seed(args.seed)
    check_output_dir(args.out, "--out")
    from .backbones.toy import ToyBackboneConfig
    from .training.toy_backbones import train_toy_backbones

    config = ToyBackboneConfig.quick() if args.preset == "quick" else ToyBackboneConfig.default()
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    out = train_toy_backbones(config, output_dir=args.out)
    print(f"wrote {out}")
    return 0


def _cmd_evaluate(args) -> int:
    from .metrics import run_evaluate_cli

    return run_evaluate_cli(args)


def _cmd_demo(args) -> int:
    from .sampling.demo import write_demo_report

    report = write_demo_report(args.out, reconstructor=args.reconstructor, subject=args.subject,
                               n_test=args.n_test, num_inference_steps=args.steps, seed=args.seed,
                               world_preset=args.world, threads=args.threads, method=args.method,
                               iterations=args.iterations)
    if report["method"] == "cad":
        print(json.dumps({k: report[k] for k in ("reconstruction", "shuffled_scan", "mean_image")}, indent=2))
        print(f"wrote {args.out}/ (reconstructions.png, report.json, results/) in {report['seconds']:.0f} s")
        return 0
    if report["method"] == "minddiffuser":
        print(json.dumps({"stages": report["stages"], "baselines": report["baselines"]}, indent=2))
        print(f"wrote {args.out}/ (reconstructions.png, stage_losses.png, report.json, results/) "
              f"in {report['seconds']:.0f} s")
        return 0
    if report["method"] == "neuraldiffuser":
        print(json.dumps({"kappa_eta": report["kappa_eta"], "baselines": report["baselines"],
                          "retrieval": report["retrieval"]}, indent=2))
        print(f"wrote {args.out}/ (reconstructions.png, kappa_eta.png, report.json, results/) "
              f"in {report['seconds']:.0f} s")
        return 0
    a, g, s = report["alpha"], report["guidance"], report["swap"]
    print(json.dumps({"alpha": a, "guidance": g, "swap": s}, indent=2))
    print(f"wrote {args.out}/ (reconstructions.png, alpha_sweep.png, swap_grid.png, report.json) "
          f"in {report['seconds']:.0f} s")
    return 0


def _cmd_train(args) -> int:
    if args.train_command == "minddiffuser":
        from .training.minddiffuser import MindDiffuserConfig, train_minddiffuser

        make = getattr(MindDiffuserConfig, args.preset)
        extra = {} if args.feature_layers is None else {"feature_layers": tuple(args.feature_layers)}
        out = train_minddiffuser(make(output_dir=args.out, subject=args.subject, threads=args.threads,
                                      ridge_backend=args.backend, **extra))
        print(f"wrote {out}/ (reconstructor/, metrics.json, run.json)")
        return 0
    if args.train_command == "neuraldiffuser":
        from .training.neuraldiffuser import NeuralDiffuserConfig, ship_neuraldiffuser, train_neuraldiffuser

        make = getattr(NeuralDiffuserConfig, args.preset)
        out = train_neuraldiffuser(make(output_dir=args.out, subject=args.subject, threads=args.threads,
                                        prior_weight=args.prior_weight))
        if os.environ.get("RANK", "0") != "0":        # torchrun / accelerate launch: the main process reports
            return 0
        print(f"wrote {out}/ (reconstructor/, metrics.json, run.json)")
        if args.ship_to:
            print(f"shipped {ship_neuraldiffuser(out, args.ship_to)}/ (the subject's voxel encoder only)")
        return 0
    if args.train_command == "cad":
        from .training.cad import CADConfig
        from .training.cad_ldm import ship_cad, train_cad

        extra = {} if args.contrast else {"cross_weight": 0.0, "self_weight": 0.0}
        if args.phase2_steps is not None:
            extra["phase2_steps"] = args.phase2_steps
        out = train_cad(getattr(CADConfig, args.preset)(output_dir=args.out, subject=args.subject,
                                                        threads=args.threads, image_mae=args.image_mae, **extra))
        print(f"wrote {out}/ (reconstructor/, fmri_mae/, metrics.json, run.json)")
        if args.ship_to:
            print(f"shipped {ship_cad(out, args.ship_to)}/")
        return 0
    if args.train_command != "neuropictor":
        build_parser().parse_args(["train", "--help"])
        return 0
    from .training.toy_recipe import train_toy_reconstructor

    out = train_toy_reconstructor(args.out, args.preset, args.subject,
                                  None if args.heldout == "none" else args.heldout, args.heldout_fraction,
                                  args.baselines, args.ship_to, args.threads)
    print(f"wrote {out}/ (one folder per run, recipe.json)")
    return 0


def _serve(cmd: list[str], print_command: bool) -> int:
    if print_command:
        print(" ".join(cmd))
        return 0
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        return 0


def _check_port(port) -> None:
    check_range("--port", port, 1024, 65535)


def _cmd_lab(args) -> int:
    _check_port(args.port)
    from .servers import lab_command

    return _serve(lab_command(port=args.port), args.print_command)


def _cmd_explore(args) -> int:
    _check_port(args.port)
    check_range("--n-test", args.n_test, 1)
    if args.steps is not None:
        check_range("--steps", args.steps, 1)
    for path in args.reconstructor or []:
        if not Path(path).expanduser().is_dir():
            raise DataNotFoundError(f"the --reconstructor folder {path!r}", [Path(path).expanduser()],
                                    data_card="neuropictor_toy.md")
    check_output_dir(args.out, "--out")
    from .servers import explorer_command

    params = {"RECONSTRUCTORS": args.reconstructor or [None], "N_TEST": args.n_test}
    if args.steps is not None:
        params["NUM_INFERENCE_STEPS"] = args.steps
    return _serve(explorer_command(Path(args.out), port=args.port, parameters=params), args.print_command)


_COMMANDS = {"toyworld": _cmd_toyworld, "card": _cmd_card, "info": _cmd_info,
             "backbones": _cmd_backbones, "evaluate": _cmd_evaluate,
             "demo": _cmd_demo, "train": _cmd_train, "lab": _cmd_lab, "explore": _cmd_explore}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
