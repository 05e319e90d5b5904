"""NeuroPictor sampling and training benchmarks: print one JSON object of measured figures.

Never asserted in tests. Usage::

    python benchmarks/bench_neuropictor.py [--quick] [--threads 1] [--out FILE]
    python benchmarks/bench_neuropictor.py --sd              # SD-2.1-size section (default when CUDA is there)
    python benchmarks/bench_neuropictor.py --sd --sd-size tiny --device cpu   # that section's code, tiny, on CPU

Sections:

``toy`` (CPU)
    The shipped toy reconstructor (a random one of the same kind when it is absent) on the
    shipped toy backbone: seconds per image of :class:`~brainrecon.sampling.BrainToImagePipeline`
    (default CFG, 25 steps, batch 8) against diffusers' ``StableDiffusionControlNetPipeline`` on
    the same U-Net with a plain ``ControlNetModel.from_unet`` copy, same batch, steps, guidance
    and run; and training steps per second of the stage-ii/iii objective
    (``L_dif + λ·L_sem``, NeuroPictor Eq. 8–9, the training stages' own objective) with AdamW.
``sd21`` (``--sd``; meant for a GPU)
    Architecture-true random weights: SD 2.1's U-Net (865.9 M parameters) and VAE, a ViT-L
    flatmap encoder on 256×256 maps, 77×1024 text conditions. Seconds per image at 512², 50 DDIM
    steps, CFG 5, batch 8 (fp16) for both pipelines; and the peak GPU memory and seconds of one
    stage-ii training step at batch 4 with bf16 autocast and gradient checkpointing.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from types import SimpleNamespace

import torch



def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int) -> float:
    """Best of ``repeats`` wall times (s) after one warm-up call."""
    fn(warmup=True)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn(warmup=False)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _controlnet_pipeline(unet, vae, scheduler, conditioning_channels):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels).to(unet.device)
    if cn.dtype != unet.dtype:
        cn.to(unet.dtype)
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, controlnet=cn,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _objective(model, unet, scheduler, empty):
    from diffusers import DDPMScheduler

    from brainrecon.training.neuropictor_objective import DenoisingObjective  # the stages' own L_dif + λ·L_sem

    from brainrecon.training.neuropictor import RefineConfig

    toy = RefineConfig.default()        # the toy recipe's objective, layout probe and timestep weights included
    return DenoisingObjective(model, unet, DDPMScheduler.from_config(scheduler.config), empty, 0.1, 0.05,
                              layout_weight=toy.layout_weight, x0_weight_max=toy.x0_weight_max)


def _train_steps(objective, maps, latents, text, steps: int, device, autocast_dtype=None) -> dict:
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ctx = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype
           else torch.autocast("cpu", enabled=False))

    def step():
        with ctx:
            loss, _ = objective(maps, latents, text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (optimizer state allocated)
    _sync(device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t) / steps
    out = {"s_per_step": dt, "steps_per_s": 1.0 / dt, "batch_size": len(maps), "trainable_parameters": sum(
        p.numel() for p in params)}
    if torch.device(device).type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


# ---------------------------------------------------------------------- toy section
def bench_toy(quick: bool) -> dict:
    from brainrecon.sampling import load_reconstructor

    pipe, which = load_reconstructor(), "shipped"          # the shipped toy reconstructor
    pipe.set_progress_bar_config(disable=True)
    batch, steps, gs = 8, 10 if quick else 25, pipe.config.default_guidance_scale
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(batch, *pipe.map_shape, generator=g)
    text = torch.randn(batch, *pipe.empty_prompt_embeds.shape[1:], generator=g)
    empty = pipe.empty_prompt_embeds.expand(batch, -1, -1)
    image = torch.rand(batch, 3, 32, 32, generator=g)

    def ours(warmup):
        pipe(maps, num_inference_steps=2 if warmup else steps, generator=torch.Generator().manual_seed(1))

    n_down = len(pipe.vae.config.block_out_channels) - 1
    cn_pipe = _controlnet_pipeline(pipe.unet, pipe.vae, pipe.scheduler, tuple(16 * 2 ** i for i in range(n_down + 1)))

    def plain(warmup):
        cn_pipe(prompt_embeds=text, negative_prompt_embeds=empty, image=image,
                num_inference_steps=2 if warmup else steps, guidance_scale=gs,
                generator=torch.Generator().manual_seed(1), output_type="pt")

    reps = 1 if quick else 2
    t_ours, t_plain = _timed(ours, "cpu", reps), _timed(plain, "cpu", reps)
    model = pipe.conditioner.train().requires_grad_(True)
    lat = torch.randn(16, *pipe._latent_shape(1)[1:], generator=g)
    train = _train_steps(_objective(model, pipe.unet, pipe.scheduler, pipe.empty_prompt_embeds[0]),
                         torch.randn(16, *pipe.map_shape, generator=g), lat,
                         torch.randn(16, *text.shape[1:], generator=g), 5 if quick else 20, "cpu")
    model.eval().requires_grad_(False)
    return {"reconstructor": which, "batch": batch, "num_inference_steps": steps, "guidance_scale": gs,
            "map_shape": list(pipe.map_shape), "neuropictor_s_per_image": t_ours / batch,
            "controlnet_pipeline_s_per_image": t_plain / batch, "ratio": t_ours / t_plain,
            "neuropictor_parameters": sum(p.numel() for p in model.parameters()),
            "controlnet_parameters": sum(p.numel() for p in cn_pipe.controlnet.parameters()), "training": train}


# ---------------------------------------------------------------------- SD-2.1-size section
def _sd_parts(size: str, device, dtype):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from brainrecon.models import CalibratedEncoder, NeuroPictorModel

    if size == "sd21":
        unet_kw = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                       attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)
        enc_kw = dict(image_size=256, patch_size=16, embed_dim=1024, depth=24, num_heads=16)
        text, image, cond = (77, 1024), 512, (16, 32, 96, 256)
    else:  # the same code at a size a CPU runs in seconds
        unet_kw = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4)
        vae_kw = dict(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, sample_size=16,
                      norm_num_groups=8)
        enc_kw = dict(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4)
        text, image, cond = (8, 32), 16, (16, 32)
    n = len(vae_kw["block_out_channels"])
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_kw).eval().requires_grad_(False)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                            **vae_kw).eval().requires_grad_(False)
        if dtype != torch.float32:
            unet.to(dtype), vae.to(dtype)
        enc = CalibratedEncoder(decoder_embed_dim=enc_kw["embed_dim"], decoder_depth=1, **enc_kw).drop_decoder()
        model = NeuroPictorModel.from_backbone(SimpleNamespace(unet=unet, text_length=text[0], text_embed_dim=text[1]),
                                               enc, use_auxiliary=True, load_weights_from_unet=False)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return unet, vae, sched, model, text, image, cond, enc_kw["image_size"]


def bench_sd(size: str, device: str, quick: bool, bf16: bool | None = None) -> dict:
    from brainrecon.sampling import BrainToImagePipeline

    cuda = torch.device(device).type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    unet, vae, sched, model, text, image, cond, side = _sd_parts(size, device, dtype)
    batch, steps, gs = 8, (10 if quick else 50), 5.0
    g = torch.Generator().manual_seed(0)
    empty = torch.randn(1, *text, generator=g)
    pipe = BrainToImagePipeline(unet, vae, sched, model.eval(), empty_prompt_embeds=empty, default_guidance_scale=gs,
                                default_num_inference_steps=steps)
    pipe.set_progress_bar_config(disable=True)
    maps = torch.randn(batch, 1, side, side, generator=g)
    prompt = torch.randn(batch, *text, generator=g).to(device, dtype)

    def ours(warmup):
        pipe(maps, num_inference_steps=2 if warmup else steps, generator=torch.Generator().manual_seed(1))

    t_ours = _timed(ours, device, 1)
    cn_pipe = _controlnet_pipeline(unet, vae, sched, cond)
    img = torch.rand(batch, 3, image, image, generator=g)

    def plain(warmup):
        cn_pipe(prompt_embeds=prompt, negative_prompt_embeds=empty.to(device, dtype).expand(batch, -1, -1), image=img,
                num_inference_steps=2 if warmup else steps, guidance_scale=gs,
                generator=torch.Generator().manual_seed(1), output_type="pt")

    t_plain = _timed(plain, device, 1)
    del cn_pipe
    out = {"size": size, "device": device, "sampling_dtype": str(dtype), "batch": batch, "num_inference_steps": steps,
           "guidance_scale": gs, "image_size": image, "map_side": side,
           "neuropictor_s_per_image": t_ours / batch, "controlnet_pipeline_s_per_image": t_plain / batch,
           "ratio": t_ours / t_plain, "unet_parameters": sum(p.numel() for p in unet.parameters()),
           "neuropictor_parameters": sum(p.numel() for p in model.parameters())}
    # one stage-ii step: trainable parts in fp32 under bf16 autocast, frozen U-Net in bf16, checkpointing
    if cuda:
        torch.cuda.empty_cache()
    bf16 = cuda if bf16 is None else bf16
    if bf16:
        unet.to(torch.bfloat16)
    unet.enable_gradient_checkpointing()
    model.float().train().requires_grad_(True)
    model.llmn.controlnet.enable_gradient_checkpointing()
    b = 4
    lat = torch.randn(b, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    objective = _objective(model, unet, sched, empty[0]).to(device)
    out["training"] = _train_steps(objective, torch.randn(b, 1, side, side, generator=g).to(device), lat.to(device),
                                   torch.randn(b, *text, generator=g).to(device), 2 if quick else 5, device,
                                   autocast_dtype=torch.bfloat16 if bf16 else None)
    out["training"].update(precision="bf16 autocast, frozen U-Net in bf16" if bf16 else "fp32",
                           gradient_checkpointing=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (CI)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: see data_cards/neuropictor_toy.md)")
    p.add_argument("--sd", action="store_true", default=None, help="run the SD-2.1-size section (default: with CUDA)")
    p.add_argument("--sd-size", choices=("sd21", "tiny"), default="sd21")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", default=None,
                   help="bf16 training step also on a CPU (default: GPU only)")
    p.add_argument("--no-toy", dest="toy", action="store_false", help="skip the toy CPU section")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers

    out = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "threads": args.threads, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    if args.toy:
        out["toy"] = bench_toy(args.quick)
    if args.sd or (args.sd is None and torch.cuda.is_available()):
        out["sd21"] = bench_sd(args.sd_size, args.device, args.quick, args.bf16)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from brainrecon.io import write_json

        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
