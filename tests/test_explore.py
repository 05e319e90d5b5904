"""Exploration helpers (reconstruct, α sweep, swap grid, evaluate_reconstructor) with a random model."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.sampling import (BrainToImagePipeline, evaluate_reconstructor, make_test_maps, plot_control_sweep,
                                 plot_swap_grid, reconstruct, swap_grid, sweep_control_scale)
from reconstructor_helpers import make_model

STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    from brainrecon.backbones import load_backbone
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    bb = load_backbone("toy")
    pipe = BrainToImagePipeline.from_backbone(bb, make_model(bb), num_inference_steps=STEPS)
    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=6, n_train=4), progress=False)
    return SimpleNamespace(pipe=pipe, world=world, data=make_test_maps(pipe, world, "subj02"))


def test_make_test_maps(env):
    d, w = env.data, env.world
    assert d["maps"].shape == (6, 1, 32, 32) and d["targets"].shape == (6, 3, 64, 64)
    assert 0 <= d["targets"].min() and d["targets"].max() <= 1
    assert set(d["image_keys"]) <= set(int(i) for i in w.test_images)
    assert np.array_equal(d["attributes"]["category"], w.scenes.category[d["image_keys"]])
    assert d["captions"][0] == w.scenes.captions[d["image_keys"][0]]
    assert len(make_test_maps(env.pipe, w, "subj01", n_test=3)["maps"]) == 3


def test_reconstruct_is_batch_independent(env):
    a = reconstruct(env.pipe, env.data, batch_size=4, seed=1, progress=False)
    assert a["images"].shape == (6, 3, 32, 32) and list(a["indices"]) == list(range(6))
    assert np.array_equal(a["image_keys"], env.data["image_keys"])
    b = reconstruct(env.pipe, env.data["maps"], indices=[4, 5], batch_size=1, seed=1, progress=False)
    assert torch.allclose(b["images"], a["images"][4:], atol=1e-5)
    from brainrecon.data.pairs import make_toy_dataset

    ds = make_toy_dataset(env.world, subjects=["subj02"], split="test", projector=env.pipe.make_projector())
    c = reconstruct(env.pipe, ds, indices=[1, 3], seed=1, progress=False)  # a dataset works the same way
    assert list(c["indices"]) == [1, 3] and torch.allclose(c["images"], a["images"][[1, 3]], atol=1e-5)
    with pytest.raises(InvalidInputError, match="one semantic source per scan"):
        reconstruct(env.pipe, env.data, semantic_source=env.data["maps"][:2], progress=False)


def test_sweep_and_swap_grid(env):
    maps, targets = env.data["maps"][:3], env.data["targets"][:3]
    sweep = sweep_control_scale(env.pipe, maps, alphas=(0, 0.5, 1), seed=2, progress=False)
    assert list(sweep) == [0.0, 0.5, 1.0] and all(v.shape == (3, 3, 32, 32) for v in sweep.values())
    assert not torch.allclose(sweep[0.0], sweep[1.0], atol=1e-3)  # same seeds, α changes the images
    fig = plot_control_sweep(sweep, targets)
    assert len(fig.axes) == 4 * 3
    grid = swap_grid(env.pipe, maps[:2], maps, seed=2)
    assert grid.shape == (2, 3, 3, 32, 32)
    # the diagonal (own semantics) is the plain reconstruction at the same seed
    own = reconstruct(env.pipe, maps, seed=2, progress=False)["images"]
    assert torch.allclose(grid[0, 0], own[0], atol=1e-5) and torch.allclose(grid[1, 1], own[1], atol=1e-5)
    assert not torch.allclose(grid[0, 0], grid[0, 2], atol=1e-3)
    assert len(plot_swap_grid(grid, targets[:2], targets).axes) == 3 * 4


def test_evaluate_reconstructor_figures(env):
    res = evaluate_reconstructor(env.pipe, env.world, "subj02", alphas=(0, 1), guidance_scales=(0, None),
                                 seed=3, progress=False)
    m = res["metrics"]
    assert set(m["alpha"]) == {"0", "1"} and set(m["guidance"]) == {"0", "5"}
    for group in ("alpha", "guidance"):
        for figures in m[group].values():
            for k in ("ssim", "pixcorr", "category_acc", "position_error"):
                assert np.isfinite(figures[k])
            assert 0 <= figures["category_acc"] <= 1 and -1 <= figures["pixcorr"] <= 1
    # α = 1 at the default guidance is the same run as guidance = default at α = 1
    assert m["alpha"]["1"] == m["guidance"]["5"]
    s = m["swap"]
    for k in ("category_follows_semantic", "category_follows_layout", "position_follows_layout"):
        assert 0 <= s[k] <= 1
    assert s["n_pairs"] == m["n_test"] == 6 and m["num_inference_steps"] == STEPS
    partners = res["swap_partners"]
    assert (partners != np.arange(6)).all()
    t = res["table"]
    assert {"condition", "control_scale", "guidance_scale", "metric", "value", "ci_low", "ci_high", "n"} <= set(t)
    assert set(t.condition) == {"alpha=0", "alpha=1", "guidance=0", "guidance=5", "swap"}
    assert res["images"]["swap"].shape == (6, 3, 32, 32)


def test_the_mean_image_is_the_8_bit_average_of_either_image_layout():
    from brainrecon.sampling import make_mean_image
    hwc = np.zeros((2, 4, 4, 3), np.uint8)
    hwc[0] = 255                                                   # a white and a black image
    hwc[1, 0, 0] = 51
    mean = make_mean_image(hwc)
    assert mean.shape == (3, 4, 4)
    torch.testing.assert_close(mean[:, 1, 1], torch.full((3,), 128 / 255))      # 127.5 rounds to 128
    torch.testing.assert_close(mean[:, 0, 0], torch.full((3,), 153 / 255))
    chw = torch.as_tensor(hwc).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(make_mean_image(chw), mean)
