"""Evaluation-suite benchmarks: print one JSON object of measured figures (never asserted in tests).

Usage::

    python benchmarks/bench_metrics.py [--quick] [--n 200] [--out FILE]
    python benchmarks/bench_metrics.py --real [--device cuda] [--n 982] [--size 425]

Sections:

``toy`` (default)
    The full toy suite (PixCorr, SSIM, six toy-CLIP feature metrics, n-way, attribute scores,
    brain correlation with the toy world's encoder) on ``n`` degraded toy test images,
    on the CPU. Per-metric seconds and images/s come from the table's ``seconds`` column.
    Baselines measured in the same run on the same 425×425 arrays: a bare ``np.corrcoef``
    loop (PixCorr's core) and a bare scikit-image SSIM loop (SSIM's core).
``real`` (``--real``)
    The standard metrics on ``n`` random ``size``×``size`` images with architecture-true,
    random-weight networks (AlexNet, Inception-v3, EfficientNet-B1, ResNet-50, CLIP ViT-L/14
    shape) written to a temporary folder; meant for a GPU with ``--n 982 --size 425``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _toy_backbone(tmp: Path):
    from brainrecon.backbones import TOY_WEIGHTS_DIR, load_backbone

    if (TOY_WEIGHTS_DIR / "image_encoder").is_dir():
        return load_backbone("toy"), "shipped"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from metrics_fakes import write_random_toy_backbone

    return load_backbone(write_random_toy_backbone(tmp / "toybb")), "random (shipped weights absent)"


def bench_toy(n: int, quick: bool) -> dict:
    """Full toy suite on ``n`` reconstructions against bare numpy / scikit-image loops."""
    from skimage.metrics import structural_similarity

    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
    from brainrecon.metrics import evaluate_folder, load_results, make_degraded_results
    from brainrecon.metrics.lowlevel import _gray, as_tensor, protocol_base, resize

    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_"))
    t = time.perf_counter()
    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=1, n_test=n, n_train=10), progress=False)
    world_s = time.perf_counter() - t
    bb, which = _toy_backbone(tmp)
    folder = make_degraded_results(tmp / "res", world=world, n=n)
    t = time.perf_counter()
    table = evaluate_folder(folder, out=False, feature_set="toy", backbone=bb, world=world)
    total = time.perf_counter() - t
    per = {r.metric: {"seconds": round(r.seconds, 4), "images_per_s": round(n / r.seconds, 1) if r.seconds else None}
           for r in table.itertuples()}
    from brainrecon.metrics import FEATURE_NAMES, ToyFeatureSet

    feature_pass = _per_network(ToyFeatureSet(bb), torch.from_numpy(world.scenes.images[world.test_images])
                                .permute(0, 3, 1, 2).float() / 255, FEATURE_NAMES)
    # baselines on the same 425x425 arrays the suite correlates
    res = load_results(folder)
    a = resize(protocol_base(as_tensor(res.targets)), 425).flatten(1).double().numpy()
    b = resize(protocol_base(as_tensor(res.reconstructions)), 425).flatten(1).double().numpy()
    t = time.perf_counter()
    [np.corrcoef(a[i], b[i])[0, 1] for i in range(n)]
    bare_pc = time.perf_counter() - t
    g = _gray(torch.from_numpy(a).float().view(n, 3, 425, 425))
    r = _gray(torch.from_numpy(b).float().view(n, 3, 425, 425))
    m = min(n, 50 if quick else n)
    t = time.perf_counter()
    [structural_similarity(r[i], g[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                           data_range=1.0) for i in range(m)]
    bare_ss = (time.perf_counter() - t) * n / m
    return {"n": n, "toy_backbone": which, "world_build_s": round(world_s, 2), "suite_total_s": round(total, 2),
            "suite_images_per_s": round(n / total, 1), "per_metric": per,
            "feature_pass_images_per_s": feature_pass, "baseline_bare_corrcoef_loop_s": round(bare_pc, 3), "baseline_bare_skimage_ssim_loop_s": round(bare_ss, 3),
            "metrics": {r.metric: round(float(r.value), 4) for r in table.itertuples()}}


def _per_network(fs, images: torch.Tensor, names) -> dict:
    """Images/s of each network's feature pass alone (reconstructions and targets = 2 passes of ``images``)."""
    from brainrecon.metrics.lowlevel import protocol_base

    x = protocol_base(images, fs.protocol)
    fs.extract(x[:2], names, based=True)                      # load the networks, warm up
    out = {}
    for n in names:
        t = time.perf_counter()
        fs.extract(x, (n,), based=True)
        out[n] = round(len(x) / (time.perf_counter() - t), 1)
    return out


def _write_random_real_weights(folder: Path) -> None:
    import torchvision.models as tvm
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    for arch, kw, name in (("alexnet", {}, "alexnet.safetensors"),
                           ("inception_v3", dict(aux_logits=True, transform_input=True, init_weights=False),
                            "inception_v3.safetensors"),
                           ("efficientnet_b1", {}, "efficientnet_b1.safetensors"),
                           ("resnet50", {}, "swav_resnet50.safetensors")):
        save_file({k: v.contiguous() for k, v in getattr(tvm, arch)(weights=None, **kw).state_dict().items()},
                  str(folder / name))
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768)      # ViT-L/14 shapes
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder / "clip-vit-large-patch14")


def bench_real(n: int, size: int, device: str) -> dict:
    """Standard metrics with architecture-true random-weight networks on ``n`` random images."""
    from brainrecon.metrics import RealFeatureSet, evaluate

    tmp = Path(tempfile.mkdtemp(prefix="bench_metrics_real_"))
    t = time.perf_counter()
    _write_random_real_weights(tmp)
    write_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    gt = torch.rand((n, 3, size // 8, size // 8), generator=g)
    gt = torch.nn.functional.interpolate(gt, size=(size, size), mode="bilinear")
    rec = (gt + 0.2 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    fs = RealFeatureSet(tmp, device=device, batch_size=64)
    t = time.perf_counter()
    table = evaluate(rec, gt, feature_set=fs, metrics=["pixcorr", "ssim", "alexnet2", "alexnet5", "inception",
                                                       "clip", "effnet", "swav"])
    total = time.perf_counter() - t
    from brainrecon.metrics import FEATURE_NAMES

    feature_pass = _per_network(fs, gt, FEATURE_NAMES)
    return {"n": n, "size": size, "device": device, "write_random_weights_s": round(write_s, 1),
            "feature_pass_images_per_s": feature_pass,
            "suite_total_s": round(total, 2), "suite_images_per_s": round(n / total, 1),
            "per_metric": {r.metric: {"seconds": round(r.seconds, 3),
                                      "images_per_s": round(n / r.seconds, 1) if r.seconds else None}
                           for r in table.itertuples()},
            "note": "feature metrics' seconds are the feature pass shared equally among them"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images (CI)")
    p.add_argument("--n", type=int, default=None, help="images (toy default 200, real default 982)")
    p.add_argument("--real", action="store_true", help="also run the real-network section")
    p.add_argument("--size", type=int, default=425)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"sections": {}}
    out["sections"]["toy"] = bench_toy(a.n or (40 if a.quick else 200), a.quick)
    if a.real:
        out["sections"]["real"] = bench_real(a.n or (8 if a.quick else 982), a.size, a.device)
    out["env"] = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
