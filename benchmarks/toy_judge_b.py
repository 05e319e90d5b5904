"""Train the second, independent judge (``attribute_classifier_b``) at full size against the shipped
toy VAE, and measure it beside the shipped judge.

Issue 11 asks that every generator figure be read by two independently trained judges. Judge b is a
part of the backbone recipe (:func:`brainrecon.training.toy_backbones._train_attributes`, ``judge="b"``:
its own 20,000 scenes from ``judge_b_seed``, its own architecture and seed, half of each batch the VAE's
round trips); this script trains it alone, for the shipped backbone's VAE, so that the diagnostic
ladder can judge with it (``toy_unet_ladder.py --judge <out>/attribute_classifier_b``) before the
backbones are retrained. Resumable: a killed run continues from ``<out>/checkpoints``.

It reports both judges' category / colour accuracy on held-out real images (``heldout_seed``) and on
their VAE round trips (each judge's ceiling for generated images), and how often the two agree on the
round trips' category. JSON to ``--json`` (default ``benchmarks/results/toy_judge_b.json``).

    python benchmarks/toy_judge_b.py               # full size (~10 min of CPU)
    python benchmarks/toy_judge_b.py --quick       # seconds: checks the script runs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from brainrecon.backbones.attributes import AttributeClassifier
from brainrecon.backbones.hub import TOY_WEIGHTS_DIR, load_backbone
from brainrecon.backbones.toy import ToyBackboneConfig
from brainrecon.data.scenes import make_scenes
from brainrecon.metrics.backbones import attribute_accuracy
from brainrecon.training.toy_backbones import _decode_all, _train_attributes
from brainrecon.io import write_json


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/toy_judge_b", help="run folder (judge, checkpoints, a copy of the VAE)")
    p.add_argument("--json", default="benchmarks/results/toy_judge_b.json")
    p.add_argument("--n-eval", type=int, default=1000, help="held-out scenes to score both judges on")
    p.add_argument("--heldout-seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny sizes (256 scenes, 20 steps): checks it runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ToyBackboneConfig.default()
    if args.quick:
        cfg = dataclasses.replace(cfg, n_train=256, judge_b_steps=20, progress=False)
        args.n_eval = min(args.n_eval, 32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "vae").is_dir():                     # the judge trains on this VAE's round trips
        shutil.copytree(TOY_WEIGHTS_DIR / "vae", out / "vae")
    t0, c0 = time.perf_counter(), time.process_time()
    rec = _train_attributes(cfg, None, out, judge="b")
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0

    te = make_scenes(args.n_eval, image_size=cfg.image_size, seed=args.heldout_seed)
    u8 = torch.from_numpy(te.images).permute(0, 3, 1, 2).contiguous()
    x = u8.float() / 255
    rt = _decode_all(out / "vae", u8).float() / 255     # the round trips of the VAE the judge trained on
    judges = {"shipped": load_backbone("toy").attribute_classifier,
              "b": AttributeClassifier.from_pretrained(out / "attribute_classifier_b").eval()}
    res = {name: {where: {k: round(v, 4) for k, v in attribute_accuracy(j, imgs, te.category, te.colour).items()
                          if k != "n"}
                  for where, imgs in (("real", x), ("vae_round_trip", rt))}
           for name, j in judges.items()}
    pred = {name: j.predict(rt)["category"] for name, j in judges.items()}
    agree = float(np.mean(np.asarray(pred["shipped"]) == np.asarray(pred["b"])))
    result = {"judges": res, "category_agreement_on_round_trips": round(agree, 4),
              "training": rec, "train_wall_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
              "config": {"n_train": cfg.n_train, "judge_b_steps": cfg.judge_b_steps,
                         "judge_b_channels": list(cfg.judge_b_channels), "judge_b_seed": cfg.judge_b_seed},
              "n_eval": args.n_eval, "heldout_seed": args.heldout_seed, "quick": args.quick,
              "threads": args.threads, "platform": platform.platform(), "torch": torch.__version__}
    write_json(args.json, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
