"""Probes behind the generator ladder's findings (no training): latent PCA, sample scale, samplers, x0 clipping.

Usage::

    python benchmarks/toy_unet_probes.py [--rung base] [--step 4000] [--n 200] [--out FILE]

Needs a ladder rung's saved denoiser (``benchmarks/toy_unet_ladder.py --rungs base`` writes
``runs/toy_unet_ladder/base/denoiser-4000.safetensors``). Reports, on held-out scenes
(``seed=10_000``) judged by the shipped attribute classifier:

* ``pca``: category / colour of the shipped VAE's decodes when only the top-k principal components
  of the latent's 16 channels are kept (where the shape lives), with each component's variance share;
* ``samplers``: the denoiser's samples under DDIM 25 / 100, DDPM 100 and DPM-Solver++ 25 at guidance 5,
  with the samples' standard deviation against the real latents' (1.0);
* ``guidance``: the same std at guidance 0 / 1 / 5 (DDIM 25);
* ``x0_clipping``: DDIM 25 with the clean-latent estimate clipped at each step (range 3 or 2) or
  dynamically thresholded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy_unet_ladder as L  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rung", default="base")
    p.add_argument("--step", type=int, default=4000)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--work", default="runs/toy_unet_ladder")
    p.add_argument("--out", default="benchmarks/results/toy_unet_probes.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTextModelWithProjection

    from brainrecon.backbones.attributes import AttributeClassifier
    from brainrecon.metrics.backbones import attribute_accuracy
    from brainrecon.backbones.hub import TOY_WEIGHTS_DIR
    from brainrecon.backbones.toy import make_toy_tokenizer
    from brainrecon.training.toy_backbones import _encode_all
    from brainrecon.data.scenes import make_scenes
    from brainrecon.diffusion import denoise_latents

    f = L.rung_factors(args.rung)
    if (f["space"] != "latent" or f["whiten"] or f["label_path"] != "context" or f["cond"] != "caption"
            or f["vae"] != "shipped" or f["schedule"] != "scaled_linear"):
        p.error("the probes take a caption-conditioned rung in the shipped latent space on the scaled-linear "
                "schedule (e.g. base, v_pred, v_wider)")
    te = make_scenes(args.n, image_size=32, seed=10_000)
    vae = AutoencoderKL.from_pretrained(TOY_WEIGHTS_DIR / "vae").eval()
    sf = float(vae.config.scaling_factor)
    judge = AttributeClassifier.from_pretrained(TOY_WEIGHTS_DIR / "attribute_classifier").eval()
    x = torch.from_numpy(te.images).permute(0, 3, 1, 2).contiguous()
    res = {"rung": args.rung, "step": args.step, "n": args.n}

    def score(img):
        a = attribute_accuracy(judge, img, te.category, te.colour)
        return {"category": round(a["category"], 4), "colour": round(a["colour"], 4)}

    with torch.no_grad():
        mu = _encode_all(vae, x)
        m = mu.permute(0, 2, 3, 1).reshape(-1, mu.shape[1]).double()
        mean = m.mean(0)
        ev, V = torch.linalg.eigh((m - mean).T @ (m - mean) / len(m))
        ev, V = ev.flip(0), V.flip(1)
        coef = (m - mean) @ V
        pca = {"variance_share": [round(float(v), 4) for v in ev / ev.sum()]}
        for k in (2, 4, 6, 8, 12, mu.shape[1]):
            c = coef.clone()
            c[:, k:] = 0
            z = (c @ V.T + mean).float().reshape(len(mu), mu.shape[2], mu.shape[3], -1).permute(0, 3, 1, 2)
            pca[f"top{k}"] = score(((vae.decode(z).sample + 1) / 2).clamp(0, 1))
        res["pca"] = pca
        z_data = mu * sf
        res["data_latent_std"] = round(float(z_data.std()), 4)

    text = CLIPTextModelWithProjection.from_pretrained(TOY_WEIGHTS_DIR / "text_encoder").eval()
    unet = L.make_denoiser(f, mu.shape[1], mu.shape[-1], text.config.hidden_size)
    model = torch.nn.ModuleDict({"unet": unet, "labels": L.LabelContext(text.config.hidden_size)})
    model.load_state_dict(load_file(str(Path(args.work) / args.rung / f"denoiser-{args.step}.safetensors")))
    model.eval()
    tok = make_toy_tokenizer()
    ids = tok(list(te.captions), padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        cond = text(ids).last_hidden_state
        unc = text(empty).last_hidden_state.expand(len(cond), -1, -1)

    def noise_fn(xin, t, branch, step):
        ctx = {"cond": cond, "uncond": unc, "both": torch.cat([unc, cond])}[branch]
        return unet(xin, t, encoder_hidden_states=ctx).sample

    betas = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 prediction_type=f["prediction"])
    ddim = dict(betas, clip_sample=False, steps_offset=1, set_alpha_to_one=False)

    def sample(sched, steps, gs):
        x0 = torch.randn((len(cond), mu.shape[1], mu.shape[2], mu.shape[3]), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            z = denoise_latents(sched, noise_fn, x0, steps, gs, generator=torch.Generator().manual_seed(1))
            img = ((vae.decode(z / sf).sample + 1) / 2).clamp(0, 1)
        return {**score(img), "sample_std": round(float(z.std()), 4)}

    res["samplers"] = {
        "ddim25": sample(DDIMScheduler(**ddim), 25, 5.0),
        "ddim100": sample(DDIMScheduler(**ddim), 100, 5.0),
        "ddpm100": sample(DDPMScheduler(**betas, clip_sample=False), 100, 5.0),
        "dpmpp25": sample(DPMSolverMultistepScheduler(**betas), 25, 5.0)}
    res["guidance"] = {f"gs{g:g}": sample(DDIMScheduler(**ddim), 25, g) for g in (0.0, 1.0, 5.0)}
    res["x0_clipping"] = {
        "clip3": sample(DDIMScheduler(**dict(ddim, clip_sample=True, clip_sample_range=3.0)), 25, 5.0),
        "clip2": sample(DDIMScheduler(**dict(ddim, clip_sample=True, clip_sample_range=2.0)), 25, 5.0),
        "dynamic_threshold": sample(DDIMScheduler(**dict(ddim, thresholding=True, dynamic_thresholding_ratio=0.995,
                                                         sample_max_value=3.0)), 25, 5.0)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
