"""The one accelerate training loop: learning, schedules, checkpoints, resume after a kill."""
import math

import pytest
import torch

from brainrecon.training import FitConfig, fit, latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")   # module-level set_num_threads is undone by other files' fixtures


class _Killed(RuntimeError):
    pass


def _problem():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(8, 1, generator=g)
    x = torch.randn(256, 8, generator=g)
    y = x @ w_true + 0.01 * torch.randn(256, 1, generator=g)

    def batches(step):
        i = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(step))
        return x[i], y[i]

    def loss_fn(model, batch, step):
        xb, yb = batch
        noise = 0.01 * torch.randn_like(yb)          # uses the global RNG, reseeded per step
        mse = torch.nn.functional.mse_loss(model(xb), yb + noise)
        return mse, {"rmse": mse.detach().sqrt()}

    return batches, loss_fn


def _model():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def _cfg(**kw):
    base = dict(max_steps=40, lr=1e-2, warmup_steps=4, checkpoint_every=10, cpu=True, progress=False, seed=3)
    base.update(kw)
    return FitConfig(**base)


def test_fit_learns_and_records_history():
    batches, loss_fn = _problem()
    res = fit(_model(), loss_fn, batches, _cfg(max_steps=60, checkpoint_every=0))
    assert res.step == 60 and len(res.history) == 60
    assert [h["step"] for h in res.history[:3]] == [1, 2, 3]
    assert "rmse" in res.history[0] and "lr" in res.history[0]
    assert res.mean_loss(last=10) < 0.2 * res.mean_loss(first=10)
    assert res.resumed_from == 0 and res.wall_time > 0


def test_lr_schedule_warmup_then_cosine():
    cfg = FitConfig(max_steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(10) == pytest.approx(1.0)
    assert cfg.lr_factor(100) == pytest.approx(0.1)
    mid = cfg.lr_factor(55)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert FitConfig(max_steps=5, lr_schedule="constant").lr_factor(4) == 1.0


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    batches, loss_fn = _problem()
    full = fit(_model(), loss_fn, batches, _cfg(), tmp_path / "full")

    def kill_at_17(step, logs):
        if step == 17:
            raise _Killed("simulated kill")

    run = tmp_path / "run"
    with pytest.raises(_Killed):
        fit(_model(), loss_fn, batches, _cfg(), run, callbacks=[kill_at_17])
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "checkpoint-10"
    assert not list(run.glob(".checkpoint-*"))          # nothing half-written left behind

    res = fit(_model(), loss_fn, batches, _cfg(), run)   # a fresh model: state comes from the checkpoint
    assert res.resumed_from == 10
    assert res.step == 40 and [h["step"] for h in res.history] == list(range(1, 41))
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)
    for a, b in zip(res.model.state_dict().values(), full.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert latest_checkpoint(run).name == "checkpoint-40"
    # keep_checkpoints=2 (default): the one before the newest stays, to fall back on if the newest is damaged
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-30", "checkpoint-40"]


def test_resume_with_an_iterable_skips_seen_batches(tmp_path):
    _, loss_fn = _problem()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(7)]
    cfg = _cfg(max_steps=20, checkpoint_every=5)
    full = fit(_model(), loss_fn, data, cfg, tmp_path / "a")

    def kill(step, logs):
        if step == 12:
            raise _Killed

    with pytest.raises(_Killed):
        fit(_model(), loss_fn, data, cfg, tmp_path / "b", callbacks=[kill])
    res = fit(_model(), loss_fn, data, cfg, tmp_path / "b")
    assert res.resumed_from == 10
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-6)


def test_non_finite_loss_is_refused():
    def bad(model, batch, step):
        return model(batch).sum() * float("nan")

    with pytest.raises(FloatingPointError, match="step 1"):
        fit(_model(), bad, lambda s: torch.ones(2, 8), _cfg(max_steps=3, checkpoint_every=0))


def test_bad_choices_are_named():
    batches, loss_fn = _problem()
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(_model(), loss_fn, batches, _cfg(lr_schedule="linear"))
