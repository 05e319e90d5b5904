"""NeuralDiffuser with and without the diffusion prior of Eq. 3 (one factor: ``prior_weight``).

Trains the default toy recipe twice with the same seed — ``prior_weight=0`` (``f_c``'s output is ``ĉ``,
MSE-regressed; what ships) and ``prior_weight=30`` (MindEye's prior scale: ``L_c = L_soft|mix + 30·L_prior``,
``ĉ`` the prior's sample) — or resumes the runs when their folders exist, then scores each with the demo's
report on the same 24 held-out scans and seeds (κ × η, baselines, retrieval) beside the runs' own held-out
decoder figures. Writes ``benchmarks/results/neuraldiffuser_prior.json``::

    python benchmarks/neuraldiffuser_prior.py --runs runs/neuraldiffuser_toy runs/nd_prior30
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from brainrecon.sampling.demo import write_demo_report
from brainrecon.training.neuraldiffuser import NeuralDiffuserConfig, train_neuraldiffuser


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs=2, default=["runs/neuraldiffuser_toy", "runs/nd_prior30"],
                   help="run folders without and with the prior (trained or resumed)")
    p.add_argument("--prior-weight", type=float, default=30.0)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/neuraldiffuser_prior.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {"platform": platform.platform(), "torch": torch.__version__, "n_test": args.n_test, "rows": {}}
    for run, weight in zip(args.runs, (0.0, args.prior_weight)):
        t0 = time.perf_counter()
        train_neuraldiffuser(NeuralDiffuserConfig.default(output_dir=run, prior_weight=weight, threads=args.threads))
        m = json.loads((Path(run) / "metrics.json").read_text())
        report = write_demo_report(Path(run) / "demo", reconstructor=Path(run) / "reconstructor", n_test=args.n_test,
                                   threads=args.threads, progress=False)
        res["rows"][f"prior_weight={weight:g}"] = {
            "run": run, "decoders": {k: m[k] for k in ("text", "latent", "feature_3")},
            "retrieval_100": m["retrieval"], "kappa_eta": report["kappa_eta"], "baselines": report["baselines"],
            "retrieval_demo": report["retrieval"], "train_wall_s": m["losses"], "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    for name, r in res["rows"].items():
        print(name, {k: round(v["error"], 3) for k, v in r["decoders"].items()},
              [(x["kappa"], x["eta"], round(x["pixcorr"], 3), round(x["clip"], 3)) for x in r["kappa_eta"]])


if __name__ == "__main__":
    main()
