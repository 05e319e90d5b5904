"""What the toy text encoder's U-Net contexts carry about a caption's main object (issue 11).

For a text encoder folder (default the shipped toy CLIP), two measurements on held-out captions:

* **separation** — mean / least L2 distance between the contexts (``last_hidden_state``, flattened) of
  captions that differ in one attribute only (category word, colour word or place phrase); the
  ladder's :func:`toy_unet_ladder.text_separation`;
* **linear read-out** — a ridge probe from the flattened contexts of 3,000 training captions to the main
  object's category, colour and place (3×3 cell of its box centre), scored on 500 held-out captions.

A cross-attention U-Net sees the first directly; the second says whether the information is there at all.
Writes ``benchmarks/results/toy_text_probe.json``.

    python benchmarks/toy_text_probe.py [--text-encoder DIR] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def probe(text, tok, n_train: int, n_test: int) -> dict:
    from brainrecon.data.scenes import make_scenes
    from toy_unet_ladder import place_index

    def feats(sc):
        ids = tok(list(sc.captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return text(ids).last_hidden_state.flatten(1).double().numpy()

    tr, te = make_scenes(n_train, 32, seed=5), make_scenes(n_test, 32, seed=10_000)
    xtr, xte = feats(tr), feats(te)
    m = xtr.mean(0)
    xc = xtr - m
    gram = xc.T @ xc + 10.0 * np.eye(xc.shape[1])
    out = {}
    for name, ytr, yte, k in (("category", tr.category, te.category, 10), ("colour", tr.colour, te.colour, 8),
                              ("place", place_index(tr.bbox / 32).numpy(), place_index(te.bbox / 32).numpy(), 9)):
        y = np.eye(k)[ytr]
        w = np.linalg.solve(gram, xc.T @ (y - y.mean(0)))
        out[name] = round(float((((xte - m) @ w).argmax(1) == yte).mean()), 4)
    return out


def main(argv=None) -> int:
    from transformers import CLIPTextModelWithProjection

    from brainrecon.backbones.hub import TOY_WEIGHTS_DIR
    from brainrecon.backbones.toy import make_toy_tokenizer
    from toy_unet_ladder import text_separation

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text-encoder", default=str(TOY_WEIGHTS_DIR / "text_encoder"))
    p.add_argument("--quick", action="store_true", help="300 / 100 captions (seconds)")
    p.add_argument("--out", default="benchmarks/results/toy_text_probe.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t = time.perf_counter()
    tok = make_toy_tokenizer()
    text = CLIPTextModelWithProjection.from_pretrained(args.text_encoder, use_safetensors=True).eval()
    n_train, n_test = (300, 100) if args.quick else (3000, 500)
    shipped = Path(args.text_encoder).resolve() == (TOY_WEIGHTS_DIR / "text_encoder").resolve()
    res = {"text_encoder": "shipped toy CLIP" if shipped else args.text_encoder, "separation": text_separation(text, tok),
           "linear_readout": probe(text, tok, n_train, n_test), "n_train": n_train, "n_test": n_test,
           "wall_s": None}
    res["wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(res))
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
