"""The denoising loop shared by every sampler in brainrecon (text→image and brain→image).

:func:`denoise_latents` runs a diffusers scheduler over ``num_inference_steps`` with
classifier-free guidance (Ho & Salimans 2022; NeuroPictor §3.4)::

    ε = ε_u + s · (ε_c − ε_u)

where ``ε_c`` / ``ε_u`` are the conditional and unconditional noise predictions and ``s`` the
guidance scale. Which network predicts them is the caller's business: ``noise_fn(x, t, branch)``
gets the scaled latent and ``branch`` — ``"cond"``, ``"uncond"`` or ``"both"`` (then ``x`` is the
batch doubled as ``[uncond; cond]``, as diffusers' pipelines do) — and returns ``ε``. Scale 1 runs
the conditional branch only, scale 0 the unconditional branch only (diffusers' convention).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

__all__ = ["denoise_latents", "prepare_scheduler", "combine_guidance"]


def prepare_scheduler(scheduler, num_inference_steps: int, device=None):
    """Set ``num_inference_steps`` timesteps on ``scheduler`` (a DDIM copy if it cannot) and return it."""
    if not hasattr(scheduler, "set_timesteps"):
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(int(num_inference_steps), device=device)
    return scheduler


def combine_guidance(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``ε_u + s · (ε_c − ε_u)`` (classifier-free guidance)."""
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def _step_kwargs(scheduler, generator, eta: float) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kw = {}
    if "generator" in params:
        kw["generator"] = generator
    if "eta" in params:
        kw["eta"] = eta
    return kw


def denoise_latents(scheduler, noise_fn: Callable, latents: torch.Tensor, num_inference_steps: int,
                    guidance_scale: float = 1.0, *, device=None, generator=None, eta: float = 0.0,
                    callback: Callable | None = None, progress_bar: Callable | None = None) -> torch.Tensor:
    """Denoise ``latents`` from pure noise to ``z_0`` with (optional) classifier-free guidance.

    Parameters
    ----------
    scheduler : diffusers scheduler
        Its timesteps are set here (it is modified in place, as in diffusers' pipelines).
    noise_fn : callable
        ``noise_fn(latent_model_input, t, branch) -> ε`` with ``branch`` in ``{"cond",
        "uncond", "both"}``; for ``"both"`` the input is ``[x; x]`` and the output ``[ε_u; ε_c]``.
    latents : Tensor ``(B, c, h, w)``
        Initial Gaussian noise (multiplied by ``scheduler.init_noise_sigma`` here).
    num_inference_steps : int
    guidance_scale : float
        ``s``: 1 = conditional only, 0 = unconditional only, otherwise both branches.
    device : torch.device, optional
        Where the timesteps live (default: the latents' device).
    generator : torch.Generator, optional
        For stochastic schedulers (passed to ``scheduler.step`` when it accepts one).
    eta : float
        DDIM's η (0: deterministic).
    callback : callable, optional
        ``callback(i, t, latents) -> latents or None`` after every step; a returned tensor
        replaces the latents (this is how ``callback_on_step_end`` is served).
    progress_bar : callable, optional
        ``progress_bar(iterable) -> iterable`` (e.g. ``DiffusionPipeline.progress_bar``).

    Returns
    -------
    Tensor
        ``z_0``, same shape as ``latents``, float32.
    """
    device = latents.device if device is None else device
    scheduler = prepare_scheduler(scheduler, num_inference_steps, device)
    gs = float(guidance_scale)
    branch = "cond" if gs == 1.0 else "uncond" if gs == 0.0 else "both"
    step_kw = _step_kwargs(scheduler, generator, eta)
    x = latents.float() * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    steps = progress_bar(list(enumerate(timesteps))) if progress_bar is not None else enumerate(timesteps)
    for i, t in steps:
        xin = scheduler.scale_model_input(x, t)
        if branch == "both":
            eps_u, eps_c = noise_fn(torch.cat([xin, xin]), t, "both").float().chunk(2)
            eps = combine_guidance(eps_u, eps_c, gs)
        else:
            eps = noise_fn(xin, t, branch).float()
        x = scheduler.step(eps, t, x, **step_kw).prev_sample
        if callback is not None:
            new = callback(i, t, x)
            if new is not None:
                x = new
    return x
