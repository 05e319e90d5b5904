"""MindDiffuser's stages on held-out toy scans: stage 1 vs stage 2 vs stage 2 from a random ``z``.

Usage::

    python benchmarks/minddiffuser_stages.py [--reconstructor DIR] [--n-test 24] [--iterations 20]
        [--lr 0.01] [--feature-layers 1 2] [--tag NAME] [--quick]

Fits (or reuses, under ``runs/minddiffuser_stages/<settings>``) the subject's ridge decoders with the
given ``--feature-layers`` unless ``--reconstructor`` names a folder, then runs
:func:`brainrecon.sampling.compare_stages` on the first ``--n-test`` shared test scans of subj01 (scan
``i``'s noise from seed ``i``, so rows differ in the stage alone) and writes
``benchmarks/results/minddiffuser_stages[_TAG].json`` (rows, baselines, decoder figures, loss curves,
timings) and a ``.png`` grid beside it. Each factor of the card's table is one run of this script with
one option changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reconstructor", default=None, help="a MindDiffuser reconstructor folder (default: fit one)")
    p.add_argument("--feature-layers", dest="layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--text-tokens", dest="text_tokens", type=int, default=16)
    p.add_argument("--n-test", dest="n_test", type=int, default=24)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--text", dest="optimise_text", action="store_true",
                   help="stage 2 updates c as well as z (the paper's text; default z only, the official code)")
    p.add_argument("--no-text", dest="optimise_text", action="store_false", help="z only (the default)")
    p.add_argument("--curve-every", dest="curve_every", type=int, default=0,
                   help="also score PixCorr / SSIM / position error every N stage-2 iterations")
    p.add_argument("--tag", default="", help="suffix of the JSON / PNG names")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke world, 4 scans, 2 iterations (seconds)")
    args = p.parse_args(argv)

    from brainrecon.data.toyworld import make_toyworld
    from brainrecon.metrics import plot_reconstruction_grid
    from brainrecon.plotting import save_figure
    from brainrecon.sampling import load_reconstructor, make_test_maps
    from brainrecon.sampling.demo import demo_world_config
    from brainrecon.sampling.two_stage import compare_stages, plot_stage_losses
    from brainrecon.training.minddiffuser import MindDiffuserConfig, train_minddiffuser

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.quick:
        args.n_test, args.iterations = 4, 2
    rec = args.reconstructor
    if rec is None:
        make = MindDiffuserConfig.smoke if args.quick else MindDiffuserConfig.default
        key = hashlib.sha1(json.dumps([args.layers, args.text_tokens, args.quick]).encode()).hexdigest()[:8]
        out = Path("runs/minddiffuser_stages") / f"fit_{key}"
        rec = train_minddiffuser(make(output_dir=str(out), feature_layers=tuple(args.layers),
                                      text_tokens=args.text_tokens, threads=args.threads)) / "reconstructor"
    t_fit = time.perf_counter() - t0
    pipe = load_reconstructor(rec)
    world = make_toyworld(demo_world_config(pipe.info, "smoke" if args.quick else None), progress=False)
    subject = pipe.info.get("subject", "subj01")
    data = make_test_maps(pipe, world, subject, args.n_test)
    bb = pipe.conditioner._backbone[0]
    train = world.scenes.images[world.subjects[subject].train_images]
    t1 = time.perf_counter()
    kw = {} if args.strength is None else {"strength": args.strength}
    res = compare_stages(pipe, data, iterations=args.iterations, lr=args.lr, judge=bb.attribute_classifier,
                         train_images=train, optimise_text=args.optimise_text, progress=True,
                         curve_every=args.curve_every, **kw)
    t_stages = time.perf_counter() - t1
    name = "minddiffuser_stages" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    res_dir = Path(__file__).resolve().parent / "results"
    decoders = json.loads((Path(rec).parent / "metrics.json").read_text()) if (Path(rec).parent / "metrics.json").is_file() else None
    report = {"settings": {k: v for k, v in vars(args).items()}, "subject": subject, "n_test": res["n_test"],
              "rows": res["rows"], "baselines": res.get("baselines"),
              "loss_mean_by_iteration": {k: [round(float(v), 3) for v in L.mean(1)] for k, L in res["losses"].items()},
              "by_iteration": res.get("by_iteration"),
              "loss_improved_share": {k: float((L[-1] < L[0]).float().mean()) for k, L in res["losses"].items()},
              "decoders": decoders, "reconstructor": str(rec), "fit_s": round(t_fit, 1),
              "stages_s": round(t_stages, 1), "threads": args.threads, "torch": torch.__version__,
              "platform": platform.platform()}
    res_dir.mkdir(exist_ok=True)
    (res_dir / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    rows = dict(res["images"])
    rows["training mean image"] = res["mean_image_pixels"][None].expand(len(data["targets"]), -1, -1, -1)
    save_figure(plot_reconstruction_grid(rows, data["targets"], n=min(8, len(data["targets"]))),
                res_dir / f"{name}.png")
    save_figure(plot_stage_losses(res["losses"]), res_dir / f"{name}_loss.png")
    print(json.dumps({"rows": report["rows"], "baselines": report["baselines"], "stages_s": report["stages_s"]},
                     indent=1))
    return report


if __name__ == "__main__":
    main()
