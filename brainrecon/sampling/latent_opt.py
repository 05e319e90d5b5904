"""MindDiffuser's stage 2: optimise the decoded ``c`` and ``z`` so the image matches decoded features.

Stage 1 is img2img from the decoded latent ``ẑ`` under the decoded text condition ``ĉ`` (the pipeline at
``strength``). Stage 2 (MindDiffuser §3.4, Eq. 5) runs that same sampling again and again with the noise
held fixed (deterministic DDIM), decodes the result ``Ŷ`` and back-propagates
``L = Σ_i ‖Φ^i(Ŷ) − Z^i‖²`` — the conditioner's :meth:`~brainrecon.models.conditioner.BrainConditioner.
feature_targets`, for MindDiffuser the image encoder's shallow layers on the dimensions its decoders kept —
through the VAE decoder and every denoising step into ``z`` (and, with ``optimise_text``, ``c``, as the
paper's text has it), with Adam (the official code: ``z`` only, lr 0.01, exponential decay 0.999 per
iteration, 300 iterations).

Memory: each U-Net call is recomputed in the backward pass (``torch.utils.checkpoint``), so an
iteration holds one step's activations at a time instead of all of them.

::

    pipe = load_reconstructor(method="minddiffuser")
    out = optimise_latents(pipe, scans, iterations=40, generator=torch.Generator().manual_seed(0))
    out.stage1_images, out.images, out.losses       # iteration 0, the last, the loss per iteration
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.checkpoint import checkpoint

from ..diffusion import denoise_latents
from ..errors import InvalidInputError, check_choice, check_range

__all__ = ["optimise_latents", "LatentOptimisationOutput", "LATENT_INITS"]

#: Where ``z`` starts: the decoded latent (the method), or Gaussian noise (the paper's Fig. 6 ablation).
LATENT_INITS = ("decoded", "random")


@dataclass
class LatentOptimisationOutput(BaseOutput):
    """What :func:`optimise_latents` returns.

    Attributes
    ----------
    images : Tensor ``(B, 3, H, W)`` in [0, 1]
        After the last iteration (stage 2).
    stage1_images : Tensor ``(B, 3, H, W)``
        Iteration 0: from the initial ``c`` and ``z`` (stage 1 when ``init="decoded"``).
    losses : Tensor ``(iterations + 1, B)``
        Eq. 5's loss of each image at each iteration (row 0: stage 1; last row: ``images``).
    snapshots : dict of int to Tensor
        Images at every ``record_every``-th iteration (and the first and last), for stepping through.
    text_condition, init_latents : Tensor
        The optimised ``c`` and ``z``.
    """

    images: torch.Tensor
    stage1_images: torch.Tensor
    losses: torch.Tensor
    snapshots: dict = field(default_factory=dict)
    text_condition: torch.Tensor | None = None
    init_latents: torch.Tensor | None = None


def optimise_latents(pipe, maps, iterations: int = 300, lr: float = 0.01, lr_decay: float = 0.999,
                     init: str = "decoded", guidance_scale: float | None = None, num_inference_steps: int | None = None,
                     strength: float | None = None, generator=None, optimise_text: bool = False,
                     gradient_checkpointing: bool = True, record_every: int = 0, callback=None,
                     progress: bool = True) -> LatentOptimisationOutput:
    """Stage 2 of MindDiffuser on a pipeline whose conditioner has feature targets (Eq. 5).

    Parameters
    ----------
    pipe : BrainToImagePipeline
        With a MindDiffuser conditioner (any conditioner whose ``feature_targets`` returns a loss of the
        final latents works) and its backbone attached.
    maps : Tensor ``(B, V)``
        Voxel responses.
    iterations : int
        Adam steps (0: stage 1 only). Refused below 0.
    lr, lr_decay : float
        Adam's learning rate and its per-iteration exponential decay.
    init : {"decoded", "random"}
        ``z``'s start: the decoded latent, or standard Gaussian latents (the paper's Fig. 6 ablation).
    guidance_scale, num_inference_steps, strength : optional
        Sampling settings (default: the pipeline's and the conditioner's ``default_strength``).
    generator : torch.Generator, optional
        Draws the img2img noise once (and the random ``z``); the same noise serves every iteration.
    optimise_text : bool
        Update ``c`` as well as ``z``. The paper's §3.4 says both; the official code
        (``Reconstruction.py``) updates ``z`` only, and so does the default: on 24 held-out toy scans, ``z``
        alone lifts SSIM (0.623 → 0.626 over 20 iterations) where ``c`` and ``z`` lower it (→ 0.615), the
        updated ``c`` painting textures the seen image lacks (data_cards/minddiffuser_toy.md).
    gradient_checkpointing : bool
        Recompute each U-Net call in the backward pass (memory ∝ one step, not all of them).
    record_every : int
        Keep the images of every ``record_every``-th iteration in ``snapshots`` (0: first and last only).
    callback : callable, optional
        ``callback(iteration, {"loss": (B,), "latents": z0, "text_condition": c, "init_latents": z})`` after
        each iteration's loss (before its update).
    progress : bool
        A progress bar over the iterations.

    Returns
    -------
    LatentOptimisationOutput
    """
    cond = pipe.conditioner
    iterations = check_range("iterations", iterations, 0)
    lr = check_range("lr", lr, 1e-12, None, float)
    lr_decay = check_range("lr_decay", lr_decay, 1e-6, 1.0, float)
    record_every = check_range("record_every", record_every, 0)
    check_choice("init", init, LATENT_INITS)
    x = cond.prepare_scans(maps, "maps")
    gs = pipe.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    steps = pipe.config.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    strength = float(getattr(cond, "default_strength", 1.0)) if strength is None else float(strength)
    check_range("guidance_scale", gs, 0.0, 50.0, float)
    check_range("num_inference_steps", steps, 1)
    check_range("strength", strength, 1e-6, 1.0, float)
    if round(steps * strength) < 1:
        raise InvalidInputError(f"strength={strength:g} with num_inference_steps={steps} runs no step.")
    device, dtype = pipe.device, pipe.dtype
    with torch.no_grad():
        state = dict(cond.encode_scans(x.to(device)))
    loss_fn = cond.feature_targets(state)
    if loss_fn is None:
        raise InvalidInputError(f"{type(cond).__name__} has no feature targets, so there is nothing for stage 2 to "
                                "align: use a MindDiffuser reconstructor fitted with feature layers.")
    shape = pipe._latent_shape(len(x))
    noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    z_init = state["init_latents"].float() if init == "decoded" else randn_tensor(
        shape, generator=generator, device=device, dtype=torch.float32)
    c = state["text_condition"].detach().float().clone().requires_grad_(optimise_text)
    z = z_init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z, c] if optimise_text else [z], lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay)
    uncond = pipe.empty_prompt_embeds.to(device, dtype).expand(len(x), -1, -1)

    def sample(c_now, z_now):
        st = {**state, "text_condition": c_now, "init_latents": z_now}

        def unet(xin, t, branch, step):
            kw = cond.unet_inputs(st, xin.to(dtype), t, branch, step, control_scale=0.0, uncond_context=uncond)
            return pipe.unet(xin.to(dtype), t, **kw).sample

        def noise_fn(xin, t, branch, step):
            if gradient_checkpointing and torch.is_grad_enabled():
                return checkpoint(unet, xin, t, branch, step, use_reentrant=False)
            return unet(xin, t, branch, step)

        return denoise_latents(pipe.scheduler, noise_fn, noise, steps, gs, init_latents=z_now, strength=strength,
                               device=device)

    def decode(latents):
        vae = pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        img = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift).sample.float()
        return ((img + 1) / 2).clamp(0, 1)

    losses, snapshots = [], {}
    its = range(iterations + 1)
    bar = pipe.progress_bar(its) if progress else its
    for it in bar:
        last = it == iterations
        with torch.set_grad_enabled(not last):
            z0 = sample(c, z)
            per = loss_fn(z0).float().reshape(-1)
            total = per.sum()              # inside the grad block: a caller's no_grad would detach it
        losses.append(per.detach().cpu())
        if it == 0 or last or (record_every and it % record_every == 0):
            with torch.no_grad():
                snapshots[it] = decode(z0.detach()).cpu()
        if callback is not None:
            callback(it, {"loss": per.detach(), "latents": z0.detach(), "text_condition": c.detach(),
                          "init_latents": z.detach()})
        if not torch.isfinite(per).all():
            raise InvalidInputError(f"stage 2's loss became non-finite at iteration {it}: lower lr (now {lr:g}).")
        if last:
            break
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    pipe.maybe_free_model_hooks()
    return LatentOptimisationOutput(images=snapshots[iterations], stage1_images=snapshots[0],
                                    losses=torch.stack(losses), snapshots=snapshots,
                                    text_condition=c.detach(), init_latents=z.detach())
