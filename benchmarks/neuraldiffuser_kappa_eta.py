"""NeuralDiffuser's κ × η table (its Tab. 2's shape) on held-out toy scans, plus 300-way retrieval.

Loads a trained NeuralDiffuser run folder (``train_neuraldiffuser``; its ``reconstructor/``), rebuilds
its toy world from the run's ``config.json``, and reconstructs the first ``--n`` test scans of its
subject at every (κ, η) with the same seeds (``sweep_feature_guidance``), scored by the evaluation
suite (PixCorr, SSIM, AlexNet(2), CLIP on the toy feature set, and the toy attribute judge), and the
brain ↔ image retrieval of the suite (``evaluate_retrieval``: 30 draws of ``min(300, N)``). Writes
JSON and a grid PNG::

    python benchmarks/neuraldiffuser_kappa_eta.py --run runs/neuraldiffuser_300 --n 100
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from brainrecon.metrics import plot_reconstruction_grid
from brainrecon.plotting import save_figure
from brainrecon.sampling import evaluate_retrieval, load_reconstructor, make_test_maps, sweep_feature_guidance
from brainrecon.training.cache import load_stage_world


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a train_neuraldiffuser output folder")
    p.add_argument("--n", type=int, default=100, help="test scans reconstructed per setting")
    p.add_argument("--kappas", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    p.add_argument("--etas", type=float, nargs="+", default=[0.2, 1.0])
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/neuraldiffuser_kappa_eta.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text())
    _, world = load_stage_world("toy", cfg.get("toy_preset", "default"), int(cfg.get("seed", 0)),
                                toy_n_test=cfg.get("toy_n_test"))
    pipe = load_reconstructor(run / "reconstructor")          # its backbone attached (guidance, retrieval)
    pipe.set_progress_bar_config(disable=True)
    subject = cfg.get("subject", "subj01")
    test = make_test_maps(pipe, world, subject)
    t0 = time.perf_counter()
    retr = evaluate_retrieval(pipe, test)
    retr.pop("table")
    n = min(args.n, len(test["targets"]))
    sweep = sweep_feature_guidance(pipe, test["maps"][:n], test["targets"][:n], kappas=args.kappas, etas=args.etas,
                                   strength=args.strength, num_inference_steps=args.steps,
                                   metrics=("pixcorr", "ssim", "alexnet2", "clip"), progress=False)
    res = {"run": str(run), "subject": subject, "n_scans": n, "strength": args.strength,
           "num_inference_steps": args.steps, "rows": sweep["rows"], "retrieval": retr,
           "n_test_retrieval": len(test["targets"]), "wall_s": round(time.perf_counter() - t0, 1),
           "threads": args.threads, "torch": torch.__version__, "platform": platform.platform()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    rows = {("κ = 0" if k == 0 else f"κ = {k:g}, η = {e:g}"): imgs[:8] for (k, e), imgs in sweep["images"].items()}
    save_figure(plot_reconstruction_grid(rows, test["targets"][:8], n=min(8, n)), out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if k != "platform"}, indent=1))


if __name__ == "__main__":
    main()
