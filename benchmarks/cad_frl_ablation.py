"""CAD's FRL ablation, representation side: plain MAE vs DC-MAE (phase 1), each then tuned by phase 2.

Usage::

    python benchmarks/cad_frl_ablation.py [--quick] [--threads 1]

Runs :func:`brainrecon.training.cad.train_cad_frl` twice on subj01 of the default toy world with the same
seeds and steps — ``cross_weight = self_weight = 0`` (a plain MAE) and the paper's weights (DC-MAE) —
sharing the toy image MAE, and writes ``benchmarks/results/cad_frl_ablation.json``: each row's held-out
masked-voxel MSE after phase 1 and after phase 2 against the training-mean response, and a ridge probe of
the encoder's mean token onto the seen image's category (held-out accuracy, chance 10 %) — the
representation's own figures. The paper's table is n-way accuracy of the images generated from each encoder
(phase 3), not built yet.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def _probe(out: Path, world, subject: str) -> dict:
    from sklearn.linear_model import RidgeClassifierCV

    from brainrecon.models.dcmae import DoubleContrastiveMAE
    from brainrecon.data.pairs import make_toy_dataset

    enc = DoubleContrastiveMAE.from_pretrained(out / "fmri_mae", use_safetensors=True).eval()
    rows = {}
    for split in ("train", "test"):
        ds = make_toy_dataset(world, subjects=[subject], split=split, representation="voxels")
        x = torch.stack([ds.brain(i) for i in range(len(ds))])
        keys = np.asarray(ds.records[0].image_keys)
        with torch.no_grad():
            h = enc.encode_tokens(x).mean(1).numpy()
        rows[split] = (h, world.scenes.category[keys])
    clf = RidgeClassifierCV(alphas=np.logspace(-2, 4, 13)).fit(*rows["train"])
    return {"category_probe": float(clf.score(*rows["test"])), "chance": 0.1}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke world and sizes (seconds)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
    from brainrecon.training.cad import CADConfig, train_cad_frl

    torch.set_num_threads(args.threads)
    make = CADConfig.smoke if args.quick else CADConfig.default
    world = make_toyworld(ToyWorldConfig.smoke() if args.quick else ToyWorldConfig(), progress=False)
    root = Path("runs/cad_frl_ablation" + ("_quick" if args.quick else ""))
    rows = {}
    for name, w in (("plain MAE", dict(cross_weight=0.0, self_weight=0.0)), ("DC-MAE", {})):
        out = root / name.replace(" ", "_")
        if name == "DC-MAE" and (root / "plain_MAE" / "image_mae").is_dir() and not (out / "image_mae").is_dir():
            shutil.copytree(root / "plain_MAE" / "image_mae", out / "image_mae")      # the same image MAE
        t0 = time.perf_counter()
        train_cad_frl(make(output_dir=str(out), threads=args.threads, **w), world=world)
        m = json.loads((out / "metrics.json").read_text())
        rows[name] = {"phase1": m["phase1"], "phase2": m.get("phase2"), **_probe(out, world, "subj01"),
                      "wall_s": round(time.perf_counter() - t0, 1)}
        print(name, json.dumps(rows[name]))
    report = {"rows": rows, "settings": {"quick": args.quick, "threads": args.threads},
              "torch": torch.__version__, "platform": platform.platform()}
    res = Path(__file__).resolve().parent / "results"
    res.mkdir(exist_ok=True)
    (res / f"cad_frl_ablation{'_quick' if args.quick else ''}.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
