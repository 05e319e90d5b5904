"""The shared denoising loop (brainrecon.diffusion): noise or img2img start, step index, hooks, guidance."""
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from brainrecon.diffusion import (combine_guidance, denoise_latents, denoising_target, img2img_timesteps,
                                  predict_original_sample)
from brainrecon.errors import InvalidInputError


def _sched(prediction_type="epsilon"):
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type)


class Recorder:
    """A linear 'model' whose two branches differ, recording what the loop hands it."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, branch, step):
        self.calls.append((int(t), branch, step, x.shape[0]))
        if branch == "both":
            u, c = x.chunk(2)
            return torch.cat([0.1 * u, 0.1 * c + 0.05])
        return 0.1 * x + (0.05 if branch == "cond" else 0.0)


def _hand_ddim(sched, x, steps, gs):
    """DDIM by hand: the reference the loop must equal at strength 1."""
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        out = 0.1 * x + gs * 0.05
        x = sched.step(out, t, x).prev_sample
    return x


def test_strength_one_equals_a_hand_written_ddim_loop_and_passes_step_indices():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    rec = Recorder()
    z = denoise_latents(_sched(), rec, noise, 10, 3.0)
    ref = _hand_ddim(_sched(), noise.clone(), 10, 3.0)
    torch.testing.assert_close(z, ref)
    assert [c[2] for c in rec.calls] == list(range(10))
    assert {c[1] for c in rec.calls} == {"both"} and rec.calls[0][3] == 4        # [uncond; cond]
    assert rec.calls[0][0] > rec.calls[-1][0]                                      # from noisy to clean


@pytest.mark.parametrize("gs,branch", [(1.0, "cond"), (0.0, "uncond")])
def test_guidance_one_and_zero_run_one_branch(gs, branch):
    rec = Recorder()
    denoise_latents(_sched(), rec, torch.randn(1, 4, 8, 8), 4, gs)
    assert {c[1] for c in rec.calls} == {branch} and rec.calls[0][3] == 1


def test_combine_guidance_is_the_cfg_formula():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert float(combine_guidance(u, c, 0.0)) == 1.0 and float(combine_guidance(u, c, 2.5)) == 6.0


def test_img2img_runs_the_last_strength_share_of_the_schedule_from_the_noised_latents():
    g = torch.Generator().manual_seed(1)
    init, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sched = _sched()
    sched.set_timesteps(20)
    full = sched.timesteps.clone()
    kept = img2img_timesteps(sched, 20, 0.3)
    assert len(kept) == 6 and torch.equal(kept, full[-6:])
    first = {}

    def fn(x, t, branch, step):
        first.setdefault("x", x.clone())
        return 0.1 * x

    rec_steps = []
    denoise_latents(_sched(), fn, noise, 20, 1.0, init_latents=init, strength=0.3,
                    callback=lambda i, t, x: rec_steps.append((i, int(t))))
    expected_x = _sched().add_noise(init, noise, kept[:1].repeat(2))
    torch.testing.assert_close(first["x"], expected_x)
    assert rec_steps == [(i, int(t)) for i, t in enumerate(kept)]


def test_low_strength_stays_closer_to_the_initial_latents():
    g = torch.Generator().manual_seed(2)
    init, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    fn = lambda x, t, b, s: torch.zeros_like(x)                  # predicts "no noise": keeps what it is given
    d = {s: float((denoise_latents(_sched(), fn, noise, 10, 1.0, init_latents=init, strength=s) - init).abs().mean())
         for s in (0.2, 0.6, 1.0)}
    assert d[0.2] < d[0.6] < d[1.0]


@pytest.mark.parametrize("kw,match", [
    (dict(strength=0.5), "needs init_latents"),
    (dict(init_latents=torch.zeros(1, 4, 8, 8), strength=0.0), r"strength must be in \(0, 1\]"),
    (dict(init_latents=torch.zeros(1, 4, 8, 8), strength=1.5), r"strength must be in \(0, 1\]"),
    (dict(init_latents=torch.zeros(1, 4, 8, 8), strength=0.01), "runs no step"),
    (dict(init_latents=torch.zeros(2, 4, 8, 8), strength=0.5), "must have one shape"),
])
def test_bad_img2img_arguments_are_refused_before_any_step(kw, match):
    rec = Recorder()
    with pytest.raises(InvalidInputError, match=match):
        denoise_latents(_sched(), rec, torch.zeros(1, 4, 8, 8), 10, 1.0, **kw)
    assert rec.calls == []


def test_a_step_hook_can_take_gradients_inside_no_grad_and_steer_the_samples():
    """Feature guidance in miniature: push x̂0 towards a target through the model's prediction."""
    sched = _sched()
    target = torch.full((1, 4, 8, 8), 0.5)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    w = torch.tensor(0.1)
    fn = lambda x, t, b, s: w * x

    def hook(i, t, x, out):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = predict_original_sample(sched, xg, fn(xg, t, "cond", i), t)
            loss = ((x0 - target) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, xg)
        ab = sched.alphas_cumprod[int(t)]
        return out + 0.05 * (1 - ab).sqrt() * grad                 # ε ← ε + κ √(1−ᾱ) ∇ (classifier guidance)

    with torch.no_grad():
        plain = denoise_latents(sched, fn, noise, 10, 1.0)
        steered = denoise_latents(sched, fn, noise, 10, 1.0, step_hook=hook)
    assert ((steered - target) ** 2).mean() < 0.5 * ((plain - target) ** 2).mean()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predict_original_sample_inverts_the_forward_process(kind):
    s = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    xt = s.add_noise(x0, eps, t)
    out = {"epsilon": eps, "v_prediction": s.get_velocity(x0, eps, t), "sample": x0}[kind]
    torch.testing.assert_close(predict_original_sample(s, xt, out, t), x0, atol=2e-4, rtol=1e-3)
    one = predict_original_sample(s, xt[:1], out[:1], int(t[0]))                 # a scalar timestep too
    torch.testing.assert_close(one, x0[:1], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoising_target_is_what_predict_original_sample_inverts(kind):
    s = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    target = denoising_target(s, x0, eps, t)
    torch.testing.assert_close(predict_original_sample(s, s.add_noise(x0, eps, t), target, t), x0,
                               atol=2e-4, rtol=1e-3)


def test_denoising_target_refuses_a_sample_predicting_scheduler():
    with pytest.raises(InvalidInputError, match="prediction_type 'sample'"):
        denoising_target(DDPMScheduler(prediction_type="sample"), torch.zeros(1), torch.zeros(1), torch.tensor([1]))
