"""PixCorr and SSIM: identities, hand-computed cases, scikit-image, and MindEye's own code path."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from brainrecon.errors import InvalidInputError
from brainrecon.metrics import as_tensor, pixcorr, pixcorr_per_image, ssim, ssim_per_image


def _images(n=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((n, size // 8, size // 8, 3))
    return np.kron(base, np.ones((1, 8, 8, 1))).astype(np.float32)   # blocky, not white noise


def test_identical_images_score_one():
    x = _images()
    assert np.allclose(pixcorr_per_image(x, x), 1.0, atol=1e-12)
    assert np.allclose(ssim_per_image(x, x), 1.0, atol=1e-12)
    assert ssim(x, x, protocol="brain-diffuser") == pytest.approx(1.0, abs=1e-12)


def test_pixcorr_hand_cases():
    x = _images(2)
    # an affine change of contrast keeps r = 1; the negative image gives r = -1
    assert pixcorr(0.5 * x + 0.25, x) == pytest.approx(1.0, abs=1e-6)
    assert pixcorr(1 - x, x) == pytest.approx(-1.0, abs=1e-6)
    # two 1-pixel... a 2x2 image is resized, so use its definition on 425 images directly
    a = np.zeros((1, 425, 425, 3), np.float32)
    b = np.zeros_like(a)
    a[:, :212] = 1.0            # top half white
    b[:, :, :212] = 1.0         # left half white
    # quadrants: (1,1) 212*212, (1,0) 212*213, (0,1) 213*212, (0,0) 213*213 pixels; r by hand
    n = 425 * 425
    pa, pb = 212 * 425 / n, 212 * 425 / n
    cov = 212 * 212 / n - pa * pb
    r = cov / np.sqrt(pa * (1 - pa) * pb * (1 - pb))
    got = pixcorr_per_image(torch.from_numpy(b).permute(0, 3, 1, 2), torch.from_numpy(a).permute(0, 3, 1, 2),
                            _based=True)
    assert got[0] == pytest.approx(r, abs=1e-9)


def test_ssim_equals_scikit_image_on_the_same_arrays():
    rng = np.random.default_rng(1)
    g = rng.random((2, 425, 425, 3))
    r = np.clip(g + 0.2 * rng.standard_normal(g.shape), 0, 1)
    t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float()  # noqa: E731
    ours = ssim_per_image(t(r), t(g), _based=True)
    cols = ssim_per_image(t(r), t(g), _based=True, columnwise=True)
    for i in range(2):
        gi, ri = rgb2gray(t(g)[i].permute(1, 2, 0).double().numpy()), rgb2gray(t(r)[i].permute(1, 2, 0).double().numpy())
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert ours[i] == pytest.approx(structural_similarity(ri, gi, **kw), abs=1e-12)
        # brain-diffuser's column-wise SSIM (scikit-image <= 0.19 with multichannel=True)
        ref = np.mean([structural_similarity(ri[:, c], gi[:, c], **kw) for c in range(425)])
        assert cols[i] == pytest.approx(ref, abs=1e-12)
    assert not np.allclose(ours, cols)


def test_mindeye_chain_matches_torchvision_reference():
    """MindEye's code verbatim (torchvision Resize, np.corrcoef, rgb2gray, skimage SSIM), to 1e-6."""
    tv = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(2)
    gt = torch.from_numpy(_images(3, 96, seed=3)).permute(0, 3, 1, 2)
    rec = (gt + 0.15 * torch.from_numpy(rng.standard_normal(gt.shape)).float()).clamp(0, 1)
    for aa in (False, True):
        R = lambda s: tv.Resize((s, s), interpolation=tv.InterpolationMode.BILINEAR, antialias=aa)  # noqa: E731
        g256, r256 = R(256)(gt), R(256)(rec)
        A = R(425)(g256).reshape(len(gt), -1).numpy()
        B = R(425)(r256).reshape(len(gt), -1).numpy()
        ref_pc = np.mean([np.corrcoef(A[i], B[i])[0, 1] for i in range(len(A))])
        g = rgb2gray(R(425)(g256).permute(0, 2, 3, 1).numpy())
        r = rgb2gray(R(425)(r256).permute(0, 2, 3, 1).numpy())
        ref_ss = np.mean([structural_similarity(r[i], g[i], gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=1.0) for i in range(len(r))])
        assert pixcorr(rec, gt, antialias=aa) == pytest.approx(ref_pc, abs=1e-6)
        assert ssim(rec, gt, antialias=aa) == pytest.approx(ref_ss, abs=1e-6)


def test_brain_diffuser_chain_is_pil_bicubic():
    from PIL import Image

    gt = (np.random.default_rng(4).random((2, 425, 425, 3)) * 255).round().astype(np.uint8)
    rec = (_images(2, 100, seed=5) * 255).round().astype(np.uint8)
    up = np.stack([np.asarray(Image.fromarray(a).resize((425, 425), Image.BICUBIC)) for a in rec]) / 255.0
    ref = np.mean([np.corrcoef(gt[i].ravel() / 255.0, up[i].ravel())[0, 1] for i in range(2)])
    assert pixcorr(rec, gt, protocol="brain-diffuser") == pytest.approx(ref, abs=1e-9)


def test_inputs_forms_and_errors():
    x = _images(2)
    u8 = (x * 255).round().astype(np.uint8)
    assert as_tensor(u8).shape == (2, 3, 64, 64)
    assert torch.allclose(as_tensor(u8), as_tensor(torch.from_numpy(u8).permute(0, 3, 1, 2)))
    with pytest.raises(InvalidInputError, match="pair up"):
        pixcorr(x, x[:1])
    bad = x.copy()
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises(InvalidInputError, match="non-finite"):
        ssim(bad, x)
    with pytest.raises(InvalidInputError, match="protocol"):
        pixcorr(x, x, protocol="mindeye3")
