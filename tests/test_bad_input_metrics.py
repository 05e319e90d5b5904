"""Issue 17, group 2: metrics refuse images they would score wrongly, and say why.

Only uint8 (0..255) and floats in [0, 1] are images; every other encoding used to be clamped
to [0, 1] and scored (random 0..255 pairs reached SSIM 0.965). Constant images make PixCorr
NaN: that now comes with a warning naming the pairs.
"""
import warnings

import numpy as np
import pytest
import torch

from brainrecon.errors import BrainreconError, InvalidInputError
from brainrecon.metrics import as_tensor, as_uint8, evaluate, pixcorr, pixcorr_per_image, save_results, ssim


def _pair(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, size, size, 3)), rng.random((n, size, size, 3))


@pytest.mark.parametrize("metric", [ssim, pixcorr])
def test_floats_in_0_255_are_refused(metric):
    a, b = _pair()
    with pytest.raises(InvalidInputError) as e:
        metric(a * 255, b * 255)
    msg = str(e.value)
    assert "reconstructions" in msg and "[0, 1]" in msg            # the problem
    assert "Divide 0..255 floats by 255" in msg and "uint8" in msg  # the fix
    assert isinstance(e.value, BrainreconError)


def test_minus_one_to_one_images_are_refused_with_the_mapping():
    a, b = _pair()
    with pytest.raises(InvalidInputError, match=r"\(x \+ 1\) / 2") as e:
        ssim(a, b * 2 - 1)                                         # targets in [-1, 1]
    assert "targets" in str(e.value) and "[-1" in str(e.value)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, np.int8, bool])
def test_integer_images_other_than_uint8_are_refused(dtype):
    a, b = _pair()
    with pytest.raises(InvalidInputError) as e:
        ssim((a * 255).astype(dtype), (b * 255).astype(dtype))
    msg = str(e.value)
    assert np.dtype(dtype).name in msg and "astype(np.uint8)" in msg


def test_torch_int64_tensors_are_refused_too():
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.int64)
    with pytest.raises(InvalidInputError, match="int64"):
        as_tensor(x)


def test_uint8_is_converted_and_rounding_is_tolerated():
    a, _ = _pair()
    u8 = (a * 255).round().astype(np.uint8)
    assert torch.equal(as_tensor(u8), torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
    assert as_uint8(as_tensor(u8)).tobytes() == u8.tobytes()       # exact round trip
    near = a.copy()
    near[0, 0, 0] = [1 + 0.4 / 255, -0.4 / 255, 0.5]               # within half an 8-bit level
    t = as_tensor(near)
    assert float(t.max()) == 1.0 and float(t.min()) == 0.0
    near[0, 0, 0, 0] = 1 + 0.6 / 255                               # just past it
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        as_tensor(near)


def test_suite_and_results_folders_refuse_them_before_any_network(tmp_path):
    a, b = _pair()
    with pytest.raises(InvalidInputError, match="255"):
        evaluate(a * 255, b * 255, metrics=["pixcorr"])
    with pytest.raises(InvalidInputError, match="255"):
        save_results(tmp_path / "r", a * 255, b)
    assert not (tmp_path / "r").exists()                           # nothing half-written


@pytest.mark.parametrize("value", [0.5, 0.3, 1 / 3])           # resampling may not keep these exact
def test_constant_images_warn_that_pixcorr_is_undefined(value):
    a, b = _pair(4)
    a[2] = value                                                   # a blank reconstruction
    with pytest.warns(UserWarning, match=r"PixCorr is undefined \(NaN\) for 1 of 4 .*pair\(s\) 2\b") as rec:
        per = pixcorr_per_image(a, b)
    assert "constant" in str(rec[0].message) and "drop those pairs" in str(rec[0].message)
    assert np.isnan(per[2]) and np.isfinite(np.delete(per, 2)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # no warning when every image varies
        pixcorr(_pair(4)[0], b)
