"""One generic training loop on ``accelerate``, used by every part brainrecon trains.

:func:`fit` has the shape of minGPT's ``Trainer``: a model (use ``nn.ModuleDict`` for
several), a loss function, a source of batches and a frozen :class:`FitConfig`. The same
call runs on a CPU, one GPU or many (``accelerate launch`` / ``notebook_launcher``).

Resuming after a kill
---------------------
With ``output_dir`` set and ``checkpoint_every > 0``, the loop writes
``output_dir/checkpoint-<step>`` with :meth:`accelerate.Accelerator.save_state` (model,
optimizer, lr schedule, RNG states) plus ``trainer_state.json`` (step, loss history).
Each checkpoint is built under a temporary name and renamed when complete, so a kill
never leaves a half-written checkpoint behind. Calling :func:`fit` again with the same
``output_dir`` loads the latest checkpoint and continues from the next step. The two newest
checkpoints are kept: if the newest cannot be read (a truncated file, e.g. after a disk
filled up), the loop warns and resumes from the previous one; if none can be read, a
:class:`~brainrecon.errors.CheckpointError` names the folders to delete.

Resumption is exact when batches come from a callable ``batches(step)`` and the loss
function draws its randomness from torch's global generator: the loop reseeds it from
``(config.seed, step)`` before every step, so an interrupted and an uninterrupted run
see the same batches, noise and dropout.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm

from ..errors import CheckpointError, check_choice, reading
from ..io import check_safetensors, read_json, write_json

__all__ = ["FitConfig", "FitResult", "fit", "latest_checkpoint"]

_CKPT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class FitConfig:
    """Settings of one :func:`fit` run.

    Parameters
    ----------
    max_steps : int
        Optimizer steps in total (a resumed run stops at the same total).
    lr : float
        Peak learning rate (AdamW).
    weight_decay : float
        AdamW weight decay.
    betas : tuple of float
        AdamW betas.
    warmup_steps : int
        Linear warm-up steps.
    lr_schedule : {"cosine", "constant"}
        Shape of the learning rate after warm-up (cosine decays to ``min_lr_ratio * lr``).
    min_lr_ratio : float
        Final learning rate of the cosine schedule as a fraction of ``lr``.
    grad_clip : float or None
        Clip the global gradient norm to this value (``None``: no clipping).
    checkpoint_every : int
        Write a resumable checkpoint every this many steps (0: never).
    keep_checkpoints : int
        How many of the newest checkpoints to keep (2: a truncated newest one falls back to the
        one before).
    cpu : bool or None
        Force the CPU (``Accelerator(cpu=True)``); ``None`` uses an accelerator if present.
    mixed_precision : {"no", "fp16", "bf16"}
        Passed to :class:`accelerate.Accelerator`.
    seed : int
        Seed of the per-step reseeding that makes resumption exact.
    log_every : int
        Steps between progress-bar updates of the loss.
    progress : bool
        Show a tqdm progress bar (main process only).
    desc : str
        Label of the progress bar.
    find_unused_parameters : bool
        Passed to DistributedDataParallel when several processes train: needed when a step leaves
        parameters unused (e.g. NeuralDiffuser's per-subject voxel encoders, one subject a step).
    """

    max_steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    cpu: bool | None = None
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    progress: bool = True
    desc: str = "train"
    find_unused_parameters: bool = False

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (0-based)."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The trained model, unwrapped from accelerate (on the training device).
    history : list of dict
        One entry per step: ``step`` (1-based), ``loss``, ``lr`` and any extra values
        the loss function returned.
    step : int
        Steps done in total (including steps done before a resume).
    wall_time : float
        Seconds spent in this call (not counting earlier, interrupted calls).
    resumed_from : int
        Step of the checkpoint this call resumed from (0: fresh start).
    """

    model: torch.nn.Module
    history: list = field(default_factory=list)
    step: int = 0
    wall_time: float = 0.0
    resumed_from: int = 0

    def mean_loss(self, first: int | None = None, last: int | None = None, key: str = "loss") -> float:
        """Mean of ``key`` over the first or last ``n`` recorded steps."""
        h = self.history[:first] if first else self.history[-last:] if last else self.history
        vals = [e[key] for e in h if key in e]
        return float(sum(vals) / len(vals)) if vals else float("nan")


def _checkpoints(output_dir) -> list:
    """Complete ``checkpoint-<step>`` folders of ``output_dir``, newest first."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()
             and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(output_dir) -> Path | None:
    """The newest complete ``checkpoint-<step>`` folder in ``output_dir`` (or ``None``)."""
    found = _checkpoints(output_dir)
    return found[0] if found else None


def _load_checkpoint(accelerator, ckpt: Path) -> dict:
    """Load ``ckpt`` into the prepared objects and return its trainer state (CheckpointError if unreadable)."""
    fix = f"Delete {ckpt} to resume from the checkpoint before it."
    state = read_json(ckpt / "trainer_state.json", fix)
    if any(ckpt.glob("*.safetensors")):
        check_safetensors(ckpt, "the checkpoint", fix)
    with reading(ckpt, fix):
        accelerator.load_state(str(ckpt))
        return {"step": int(state["step"]), "history": list(state["history"]), "max_steps": state.get("max_steps")}


def _resume(accelerator, out: Path):
    """``(checkpoint, state)`` of the newest readable checkpoint in ``out``, falling back to older ones."""
    found = _checkpoints(out)
    errors = []
    for ckpt in found:
        try:
            state = _load_checkpoint(accelerator, ckpt)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err}\nSkipping {ckpt.name}; trying the checkpoint before it.", stacklevel=3)
            continue
        return ckpt, state
    if found:
        raise CheckpointError("no checkpoint in " + str(out) + " can be read:\n" + "\n".join(errors) +
                              "\nDelete " + ", ".join(str(p) for p in found) + " to start this run from step 0.")
    return None, None


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1)


def fit(model: torch.nn.Module, loss_fn: Callable, batches, config: FitConfig,
        output_dir=None, parameters: Sequence[torch.nn.Parameter] | None = None,
        callbacks: Iterable[Callable] = ()) -> FitResult:
    """Train ``model`` for ``config.max_steps`` steps, resuming from ``output_dir`` if possible.

    Parameters
    ----------
    model : torch.nn.Module
        What is trained. Several models go in one ``nn.ModuleDict``. Frozen parts can live
        outside it (closed over by ``loss_fn``) or inside with ``requires_grad=False``.
    loss_fn : callable
        ``loss_fn(model, batch, step) -> loss`` or ``-> (loss, dict_of_floats)``; ``model``
        is the accelerate-prepared model, ``batch`` is already on the device.
    batches : callable or iterable
        ``batches(step) -> batch`` (deterministic in ``step``: exact resumption), or an
        iterable of batches that is cycled (on resume, the already-seen batches are skipped).
        A batch is a tensor, or a tuple/list/dict of tensors (moved to the device) and
        other objects (left as they are).
    config : FitConfig
        Run settings.
    output_dir : path-like, optional
        Where checkpoints go; ``None`` disables checkpointing and resuming.
    parameters : sequence of Parameter, optional
        What the optimizer updates; default: every parameter of ``model`` with
        ``requires_grad``.
    callbacks : iterable of callable
        Each is called as ``cb(step, logs)`` after every step (main process); raising
        stops training (checkpoints already written stay valid).

    Returns
    -------
    FitResult

    Raises
    ------
    CheckpointError
        No checkpoint in ``output_dir`` can be read (an unreadable newest one only warns and
        the one before it is used).
    """
    check_choice("lr_schedule", config.lr_schedule, ("cosine", "constant"))
    check_choice("mixed_precision", config.mixed_precision, ("no", "fp16", "bf16"))
    cpu = (not torch.cuda.is_available()) if config.cpu is None else bool(config.cpu)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if config.find_unused_parameters else None
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, kwargs_handlers=handlers)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    if not params:
        raise CheckpointError("fit() got a model with no trainable parameters.")
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start, history, resumed_from = 0, [], 0
    out = Path(output_dir) if output_dir is not None else None
    ckpt, state = _resume(accelerator, out) if out is not None else (None, None)
    if ckpt is not None:
        start, history = state["step"], state["history"]
        resumed_from = start
        if state.get("max_steps") not in (None, config.max_steps):
            accelerator.print(f"note: {ckpt} was written with max_steps={state['max_steps']}, "
                              f"continuing to {config.max_steps}")

    get_batch = _batch_source(batches, start)
    bar = tqdm(total=config.max_steps, initial=start, desc=config.desc, dynamic_ncols=True,
               disable=not (config.progress and accelerator.is_main_process))
    t0 = time.perf_counter()
    model.train()
    try:
        for step in range(start, config.max_steps):
            torch.manual_seed(_step_seed(config.seed, step))
            batch = _to_device(get_batch(step), accelerator.device)
            with accelerator.autocast():
                res = loss_fn(model, batch, step)
            loss, extra = (res if isinstance(res, tuple) else (res, {}))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{config.desc}: loss became {loss.item()} at step {step + 1}; "
                                         "lower the learning rate or check the inputs.")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if config.grad_clip:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            logs = {"step": step + 1, "loss": float(loss.detach()), "lr": float(scheduler.get_last_lr()[0])}
            logs.update({k: float(v) for k, v in extra.items()})
            history.append(logs)
            bar.update(1)
            if (step + 1) % max(1, config.log_every) == 0 or step + 1 == config.max_steps:
                recent = history[-max(1, config.log_every):]
                bar.set_postfix(loss=f"{sum(e['loss'] for e in recent) / len(recent):.4g}")
            if out is not None and config.checkpoint_every and (
                    (step + 1) % config.checkpoint_every == 0 or step + 1 == config.max_steps):
                _save_checkpoint(accelerator, out, step + 1, history, config)
            for cb in callbacks:
                cb(step + 1, logs)
    finally:
        bar.close()
    accelerator.wait_for_everyone()
    return FitResult(model=accelerator.unwrap_model(model), history=history, step=len(history),
                     wall_time=time.perf_counter() - t0, resumed_from=resumed_from)


def _batch_source(batches, start: int):
    if callable(batches):
        return batches
    it = iter(batches)
    source = {"it": it, "iterable": batches}

    def nxt(_step):
        try:
            return next(source["it"])
        except StopIteration:
            source["it"] = iter(source["iterable"])
            try:
                return next(source["it"])
            except StopIteration:
                raise ValueError("fit(): the batch iterable is empty.") from None

    for s in range(start):                 # skip what a resumed run has already seen
        nxt(s)
    return nxt


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _save_checkpoint(accelerator, out: Path, step: int, history: list, config: FitConfig) -> None:
    accelerator.wait_for_everyone()
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        write_json(tmp / "trainer_state.json", {"step": step, "max_steps": config.max_steps,
                                                 "history": history, "config": asdict(config)})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        found = sorted((int(m.group(1)), p) for p in out.iterdir()
                       if (m := _CKPT.match(p.name)) and p.is_dir())
        for _, p in found[:-max(1, config.keep_checkpoints)]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
