"""The denoising loop shared by every sampler in brainrecon (text→image and brain→image).

It sits below the backbones and the methods: it knows diffusers schedulers and tensors, nothing of
brains, captions or any one method. :func:`denoise_latents` runs a scheduler over
``num_inference_steps`` with classifier-free guidance (Ho & Salimans 2022; NeuroPictor §3.4)::

    ε = ε_u + s · (ε_c − ε_u)

where ``ε_c`` / ``ε_u`` are the conditional and unconditional model outputs (ε or v, whatever the
scheduler's ``prediction_type`` says; the combination is linear either way) and ``s`` the guidance
scale. Which network predicts them is the caller's business: ``noise_fn(x, t, branch, step)`` gets
the scaled latent, the timestep, ``branch`` — ``"cond"``, ``"uncond"`` or ``"both"`` (then ``x`` is
the batch doubled as ``[uncond; cond]``, as diffusers' pipelines do) — and the step index, and
returns the model output. Scale 1 runs the conditional branch only, scale 0 the unconditional branch
only (diffusers' convention).

Beyond text→image sampling the loop serves the methods' other needs:

* **img2img** (``init_latents`` and ``strength`` η ∈ (0, 1]): the first ``round(η · steps)`` steps are
  skipped and the given latents are noised to the first kept timestep, as diffusers'
  ``StableDiffusionImg2ImgPipeline`` does (MindDiffuser's and NeuralDiffuser's starting point);
* **guidance hooks** (``step_hook``): called after the model output of every step, with gradients
  allowed, so feature guidance (κ) or latent optimisation can change that output or the latents;
* **callbacks** (``callback``) after every scheduler step (``callback_on_step_end``).

The loop does not switch gradients off: callers that sample wrap it in ``torch.no_grad()`` and
hooks that need gradients use ``torch.enable_grad()`` inside.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from diffusers import DDIMScheduler

from .errors import InvalidInputError

__all__ = ["denoise_latents", "prepare_scheduler", "combine_guidance", "img2img_timesteps",
           "predict_original_sample", "denoising_target", "min_snr_weight"]


def prepare_scheduler(scheduler, num_inference_steps: int, device=None):
    """Set ``num_inference_steps`` timesteps on ``scheduler`` (a DDIM copy if it cannot) and return it."""
    if not hasattr(scheduler, "set_timesteps"):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(int(num_inference_steps), device=device)
    return scheduler


def combine_guidance(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``ε_u + s · (ε_c − ε_u)`` (classifier-free guidance)."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps an img2img run of ``strength`` η keeps (the last ``round(η · steps)``).

    ``scheduler`` must have had :func:`prepare_scheduler` called. η = 1 keeps them all.
    """
    strength = float(strength)
    if not 0.0 < strength <= 1.0:
        raise InvalidInputError(f"strength must be in (0, 1], got {strength}: it is the share of the "
                                f"{num_inference_steps} denoising steps run from the given latents.")
    keep = min(int(round(num_inference_steps * strength)), num_inference_steps)
    if keep < 1:
        raise InvalidInputError(f"strength={strength} with num_inference_steps={num_inference_steps} runs no "
                                f"step; raise either so that strength x steps >= 0.5.")
    order = int(getattr(scheduler, "order", 1))
    return scheduler.timesteps[(num_inference_steps - keep) * order:]


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
    """What a denoiser trained for ``scheduler`` regresses: ``noise`` (ε) or the velocity (v).

    ``v = √ᾱ_t ε − √(1−ᾱ_t) x_0`` (Salimans & Ho 2022; SD 2.1-768's target); the training losses of
    every method and backbone call this, so a scheduler's ``prediction_type`` decides their target.

    Raises
    ------
    InvalidInputError
        If the scheduler predicts neither ε nor v.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise InvalidInputError(f"prediction_type {kind!r} is not supported for training (epsilon or v_prediction).")


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) of ``timesteps``, for the scheduler's target.

    ``min(SNR_t, γ) / SNR_t`` for ε and ``min(SNR_t, γ) / (SNR_t + 1)`` for v, with
    ``SNR_t = ᾱ_t / (1 − ᾱ_t)``: both weight the implied x0 error by ``min(SNR_t, γ)``, so the
    nearly clean steps stop dominating the loss.
    """
    ab = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()].float()
    snr = ab / (1 - ab).clamp(min=1e-12)
    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise InvalidInputError(f"prediction_type {kind!r} is not supported for training (epsilon or v_prediction).")
    return snr.clamp(max=float(gamma)) / (snr.clamp(min=1e-12) if kind == "epsilon" else snr + 1)


def predict_original_sample(scheduler, sample: torch.Tensor, model_output: torch.Tensor, timestep) -> torch.Tensor:
    """The clean-latent estimate ``x̂_0`` of ``sample`` at ``timestep`` (ε, v or sample prediction).

    ``x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t`` for ε, ``√ᾱ_t x_t − √(1−ᾱ_t) v`` for v (Salimans & Ho 2022).
    What feature guidance decodes and compares with its targets.
    """
    kind = scheduler.config.prediction_type
    ab = scheduler.alphas_cumprod.to(sample.device)[torch.as_tensor(timestep, device=sample.device).long()]
    ab = ab.to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1))) if ab.ndim else ab.to(sample.dtype)
    if kind == "epsilon":
        return (sample - (1 - ab).sqrt() * model_output) / ab.sqrt()
    if kind == "v_prediction":
        return ab.sqrt() * sample - (1 - ab).sqrt() * model_output
    if kind == "sample":
        return model_output
    raise InvalidInputError(f"unknown prediction_type {kind!r} (epsilon, v_prediction or sample).")


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kw = {}
    if "generator" in params:
        kw["generator"] = generator
    if "eta" in params:
        kw["eta"] = eta
    return kw


def denoise_latents(scheduler, noise_fn: Callable, latents: torch.Tensor, num_inference_steps: int,
                    guidance_scale: float = 1.0, *, init_latents: torch.Tensor | None = None,
                    strength: float = 1.0, device=None, generator=None, eta: float = 0.0,
                    step_hook: Callable | None = None, callback: Callable | None = None,
                    progress_bar: Callable | None = None) -> torch.Tensor:
    """Denoise to ``z_0``: from pure noise, or from ``init_latents`` noised at ``strength`` (img2img).

    Parameters
    ----------
    scheduler : diffusers scheduler
        Its timesteps are set here (it is modified in place, as in diffusers' pipelines).
    noise_fn : callable
        ``noise_fn(latent_model_input, t, branch, step) -> model output`` with ``branch`` in
        ``{"cond", "uncond", "both"}`` (for ``"both"`` the input is ``[x; x]`` and the output
        ``[ε_u; ε_c]``) and ``step`` the 0-based index of the step among those run.
    latents : Tensor ``(B, c, h, w)``
        Gaussian noise: the starting point (times ``scheduler.init_noise_sigma``), or with
        ``init_latents`` the noise added to them.
    num_inference_steps : int
        Steps of the full schedule; img2img runs the last ``round(strength · steps)`` of them.
    guidance_scale : float
        ``s``: 1 = conditional only, 0 = unconditional only, otherwise both branches.
    init_latents : Tensor ``(B, c, h, w)``, optional
        Clean latents to start from (img2img). ``None``: start from noise (``strength`` must be 1).
    strength : float
        η ∈ (0, 1]: how much of the schedule is run from ``init_latents`` (1: all of it).
    device : torch.device, optional
        Where the timesteps live (default: the latents' device).
    generator : torch.Generator, optional
        For stochastic schedulers (passed to ``scheduler.step`` when it accepts one).
    eta : float
        DDIM's η (0: deterministic).
    step_hook : callable, optional
        ``step_hook(step, t, x, model_output) -> model_output or None``, called after guidance and
        before the scheduler step; gradients are not switched off around it (feature guidance).
    callback : callable, optional
        ``callback(step, t, latents) -> latents or None`` after every scheduler step; a returned
        tensor replaces the latents (this is how ``callback_on_step_end`` is served).
    progress_bar : callable, optional
        ``progress_bar(iterable) -> iterable`` (e.g. ``DiffusionPipeline.progress_bar``).

    Returns
    -------
    Tensor
        ``z_0``, same shape as ``latents``, float32.
    """
    if init_latents is None and float(strength) != 1.0:
        raise InvalidInputError(f"strength={strength} needs init_latents (img2img starts from given latents); "
                                f"without them the loop starts from noise at strength 1.")
    if init_latents is not None and tuple(init_latents.shape) != tuple(latents.shape):
        raise InvalidInputError(f"init_latents {tuple(init_latents.shape)} and the noise {tuple(latents.shape)} "
                                f"must have one shape.")
    device = latents.device if device is None else device
    scheduler = prepare_scheduler(scheduler, num_inference_steps, device)
    gs = float(guidance_scale)
    branch = "cond" if gs == 1.0 else "uncond" if gs == 0.0 else "both"
    step_kw = _step_kwargs(scheduler, generator, eta)
    if init_latents is None:
        timesteps = scheduler.timesteps
        x = latents.float() * scheduler.init_noise_sigma
    else:
        timesteps = img2img_timesteps(scheduler, num_inference_steps, strength)
        t0 = timesteps[:1].repeat(len(latents))
        x = scheduler.add_noise(init_latents.float().to(device), latents.float().to(device), t0)
    steps = progress_bar(list(enumerate(timesteps))) if progress_bar is not None else enumerate(timesteps)
    for i, t in steps:
        xin = scheduler.scale_model_input(x, t)
        if branch == "both":
            out_u, out_c = noise_fn(torch.cat([xin, xin]), t, "both", i).float().chunk(2)
            out = combine_guidance(out_u, out_c, gs)
        else:
            out = noise_fn(xin, t, branch, i).float()
        if step_hook is not None:
            new = step_hook(i, t, x, out)
            if new is not None:
                out = new
        x = scheduler.step(out, t, x, **step_kw).prev_sample
        if callback is not None:
            new = callback(i, t, x)
            if new is not None:
                x = new
    return x
