"""Brain correlation: the toy world's own encoder, and the NSD ridge encoding model (himalaya)."""
import sys

import numpy as np
import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.metrics import RidgeEncodingModel, brain_correlation, toy_encoder, toy_measured, toy_regions


class _PixelFeatures:
    """A feature set whose 'alexnet5' is the 4×4 average-pooled image (known, linear)."""

    def extract(self, images, names=("alexnet5",), based=False):
        f = torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1).numpy()
        return {n: f for n in names}


def test_ridge_encoding_model_recovers_a_linear_brain():
    pytest.importorskip("himalaya")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 16, 50))
    imgs = torch.rand(240, 3, 16, 16)
    feats = _PixelFeatures().extract(imgs)["alexnet5"]
    resp = (feats - feats.mean(0)) / feats.std(0) @ w
    resp += 0.5 * resp.std() * rng.standard_normal(resp.shape)
    model = RidgeEncodingModel(_PixelFeatures(), cv=3).fit(imgs[:200], resp[:200])
    pred = model(imgs[200:])
    assert pred.shape == (40, 50)
    r = brain_correlation(imgs[200:], resp[200:], model, {"all": np.ones(50, bool), "half": np.arange(50) < 25})
    assert set(r) == {"all", "half"} and r["all"].mean() > 0.8


def test_ridge_needs_fit_and_names_the_extra(monkeypatch):
    with pytest.raises(InvalidInputError, match="fit"):
        RidgeEncodingModel(_PixelFeatures())(torch.rand(2, 3, 8, 8))
    monkeypatch.setitem(sys.modules, "himalaya", None)
    monkeypatch.setitem(sys.modules, "himalaya.kernel_ridge", None)
    with pytest.raises(ImportError, match=r"brainrecon\[metrics\]"):
        RidgeEncodingModel(_PixelFeatures()).fit(torch.rand(4, 3, 8, 8), np.zeros((4, 2)))


def test_toy_encoder_regions_and_measured():
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=1, n_test=8, n_train=10, n_calibration=64), progress=False)
    ids = world.test_images
    meas = toy_measured(world, "subj01", ids)
    regs = toy_regions(world, "subj01")
    s = world.subject("subj01")
    assert meas.shape == (8, s.n_vox) and {"visual", "V1", "early", "higher"} <= set(regs)
    enc = toy_encoder(world, "subj01")
    x = torch.from_numpy(world.scenes.images[ids]).permute(0, 3, 1, 2).float() / 255
    assert np.allclose(enc(x), s.encode(world.scenes.images[ids]), atol=1e-4)
    # the noise-free model of the seen image correlates with the measurement; a wrong image less so
    own = brain_correlation(x, meas, enc, regs)["visual"]
    wrong = brain_correlation(x.roll(1, 0), meas, enc, regs)["visual"]
    assert own.mean() > wrong.mean() and own.mean() > 0.2
    with pytest.raises(InvalidInputError, match="never saw"):
        toy_measured(world, "subj01", [10_000])
