"""FlatmapProjector and plot_flatmap: geometry, exactness, layouts, errors, GIfTI input."""
import gzip

import numpy as np
import pytest
import torch

from brainrecon.data.fsaverage import (N_VERTICES_FSAVERAGE, load_fsaverage5, load_visual_areas)
from brainrecon.data.surface import FlatmapProjector, plot_flatmap
from brainrecon.errors import InvalidInputError

N = 20484
K = 10242


@pytest.fixture(scope="module")
def surf():
    return load_fsaverage5()


@pytest.fixture(scope="module")
def flat_xy(surf):
    return np.concatenate([surf.left.flat, surf.right.flat])


@pytest.fixture(scope="module")
def p128():
    return FlatmapProjector(128)


@pytest.mark.parametrize("resolution, crop", [(64, None), (64, "visual"), ((96, 160), None),
                                              (128, "early"), (256, "visual")])
def test_shapes_masks_and_matrix(resolution, crop):
    p = FlatmapProjector(resolution, crop=crop)
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    assert p.resolution == (h, w)
    assert p.matrix.shape == (h * w, N) and p.pixel_mask.shape == (h, w)
    assert p.vertex_mask.shape == (N,) and p.pixel_xy.shape == (h, w, 2)
    x = np.random.default_rng(0).standard_normal((2, 3, N)).astype(np.float32)
    y = p.transform(x)
    assert y.shape == (2, 3, 1, h, w) and y.dtype == np.float32
    assert p.transform(x[0, 0]).shape == (1, h, w)
    assert p.transform(np.zeros((0, N))).shape == (0, 1, h, w)
    # every covered pixel is a convex combination of <= 3 vertices; the rest are empty rows
    rows = np.asarray(p.matrix.sum(1)).ravel()
    np.testing.assert_allclose(rows[p.pixel_mask.ravel()], 1.0, atol=1e-12)
    assert (rows[~p.pixel_mask.ravel()] == 0).all()
    assert np.diff(p.matrix.indptr).max() <= 3 and p.matrix.data.min() >= 0
    # both halves carry data, and a sizeable part of the image does
    assert p.pixel_mask[:, : w // 2].any() and p.pixel_mask[:, w // 2:].any()
    assert p.pixel_mask.mean() > 0.3


def test_constant_map_is_constant_on_the_patch_and_zero_elsewhere(p128):
    img = p128.transform(np.full(N, 2.5))[0]
    np.testing.assert_allclose(img[p128.pixel_mask], 2.5, rtol=1e-6)
    assert (img[~p128.pixel_mask] == 0).all()


@pytest.mark.parametrize("crop", [None, "visual"])
def test_linear_functions_of_flat_coordinates_are_exact(flat_xy, crop):
    p = FlatmapProjector(96, crop=crop)
    v = 0.01 * flat_xy[:, 0] - 0.004 * flat_xy[:, 1] + 0.3       # linear in each hemisphere's frame
    img = p.transform(v)[0]
    expected = 0.01 * p.pixel_xy[..., 0] - 0.004 * p.pixel_xy[..., 1] + 0.3
    assert np.abs(img - expected)[p.pixel_mask].max() < 1e-5
    # a function of flat x alone is linear across columns: a constant step in every row
    img = p.transform(0.01 * flat_xy[:, 0])[0]
    m = p.pixel_mask
    h, w = p.resolution
    for half in (slice(0, w // 2), slice(w // 2, w)):
        sub, msk = img[:, half], m[:, half]
        both = msk[:, 1:] & msk[:, :-1]
        steps = np.diff(sub, axis=1)[both]
        np.testing.assert_allclose(steps, 0.01 * p.pixel_size[1], atol=1e-5)
        # and every row of a half is the same line (x does not depend on the row)
        spread = np.where(msk, sub, -np.inf).max(0) + np.where(msk, -sub, -np.inf).max(0)
        assert spread[msk.any(0)].max() < 1e-5


def test_orientation_left_left_right_right_occipital_inward_dorsal_up(p128):
    lab = p128.project_labels(load_visual_areas("geometric"))
    h, w = p128.resolution
    rr, cc = np.nonzero(lab == 1)                                 # V1
    left, right = cc < w // 2, cc >= w // 2
    assert left.any() and right.any()
    # V1 hugs the midline of the image in both halves (posterior cuts face inward)
    assert cc[left].mean() > 0.35 * w and cc[right].mean() < 0.65 * w
    assert np.abs(cc[left].mean() - (w - 1 - cc[right].mean())) < 0.08 * w
    # V3a (dorsal) sits above hV4 (ventral): +y is up
    assert np.nonzero(lab == 12)[0].mean() < np.nonzero(lab == 4)[0].mean()
    # left half shows left-hemisphere vertices only
    cols = p128.matrix.tocoo()
    pix_col = cols.row % w
    assert (cols.col[pix_col < w // 2] < K).all() and (cols.col[pix_col >= w // 2] >= K).all()


def test_numpy_and_torch_agree_and_batch_equals_loop(p128):
    x = np.random.default_rng(1).standard_normal((5, N)).astype(np.float32)
    a = p128.transform(x)
    b = p128.transform(torch.from_numpy(x))
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    np.testing.assert_array_equal(a, b.numpy())
    loop = np.stack([p128.transform(xi) for xi in x])
    np.testing.assert_allclose(a, loop, rtol=0, atol=1e-6)
    # integer and half-precision inputs are promoted; the result is float32 either way
    assert p128.transform(torch.from_numpy(x).to(torch.bfloat16)).dtype == torch.float32
    assert p128.transform(np.ones((2, N), np.int16)).dtype == np.float32
    # float64 input takes the float64 matrix and is still returned as float32
    np.testing.assert_allclose(p128.transform(x.astype(np.float64)), a, atol=1e-6)
    # the differentiable (torch.sparse) path: same values, gradients flow
    t = torch.from_numpy(x).requires_grad_(True)
    c = p128.transform(t)
    np.testing.assert_allclose(c.detach().numpy(), a, atol=1e-5)
    c.sum().backward()
    expect = np.asarray(p128.matrix.sum(0)).ravel()
    np.testing.assert_allclose(t.grad[0].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_out_argument_writes_in_place(p128):
    x = np.random.default_rng(2).standard_normal((40, N)).astype(np.float32)
    buf = np.full((40, 1, 128, 128), np.nan, np.float32)
    res = p128.transform(x, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, p128.transform(x))
    with pytest.raises(InvalidInputError, match="C-contiguous float32"):
        p128.transform(x, out=np.empty((40, 1, 64, 64), np.float32))


def test_full_fsaverage_input_is_reduced_by_nesting(p128):
    full = np.random.default_rng(3).standard_normal((2, 2 * N_VERTICES_FSAVERAGE)).astype(np.float32)
    small = np.concatenate([full[:, :K], full[:, N_VERTICES_FSAVERAGE:N_VERTICES_FSAVERAGE + K]], 1)
    np.testing.assert_array_equal(p128.transform(full), p128.transform(small))
    np.testing.assert_array_equal(p128.transform(torch.from_numpy(full)).numpy(), p128.transform(small))


def test_subject_vertex_subset_counts_missing_vertices_as_zero(p128):
    rng = np.random.default_rng(4)
    verts = np.sort(rng.choice(N, 7000, replace=False))[::-1].copy()   # any order
    vals = rng.standard_normal((3, len(verts))).astype(np.float32)
    dense = np.zeros((3, N), np.float32)
    dense[:, verts] = vals
    np.testing.assert_array_equal(p128.transform(vals, vertices=verts), p128.transform(dense))
    np.testing.assert_array_equal(
        p128.transform(torch.from_numpy(vals), vertices=torch.from_numpy(verts)).numpy(),
        p128.transform(dense))
    back = p128.inverse(p128.transform(dense), vertices=verts)
    assert back.shape == (3, len(verts))


def test_inverse_round_trip_on_smooth_maps(surf):
    p = FlatmapProjector(256)
    sph = np.concatenate([surf.left.sphere, surf.right.sphere])         # radius 100 mm
    smooth = np.sin(sph[:, 0] / 40.0) + np.cos(sph[:, 1] / 50.0)         # range ~3.5
    back = p.inverse(p.transform(smooth))
    err = np.abs(back - smooth)[p.vertex_mask]
    # measured: max 0.077, mean 0.004 (2.5 % / 0.13 % of the 3.1 range); worst at the patch rim
    assert err.max() < 0.1 and err.mean() < 0.01
    assert (back[~p.vertex_mask] == 0).all()
    # nearly every vertex on the flat patch is recovered at 256 x 256; few off it
    assert p.vertex_mask[surf.on_flat].mean() > 0.95 and p.vertex_mask[~surf.on_flat].sum() == 0
    # an image that is constant on the patch back-projects to that constant
    const = p.inverse(np.where(p.pixel_mask, 3.0, 0.0))
    np.testing.assert_allclose(const[p.vertex_mask], 3.0, rtol=1e-6)
    t = p.inverse(torch.from_numpy(p.transform(smooth)))
    np.testing.assert_allclose(t.numpy(), back, atol=1e-6)


def test_crop_and_mask(flat_xy):
    va = load_visual_areas("geometric")
    full, crop = FlatmapProjector(128), FlatmapProjector(128, crop="visual")
    masked = FlatmapProjector(128, crop="visual", mask=True)
    # the crop box contains every visual vertex on the patch, plus the margin
    for k, (name, hemi_sl) in enumerate((("left", slice(0, K)), ("right", slice(K, N)))):
        x0, x1, y0, y1 = crop.boxes[name]
        xy = flat_xy[hemi_sl][(va.labels[hemi_sl] > 0)]
        assert x0 < xy[:, 0].min() and xy[:, 0].max() < x1 and y0 < xy[:, 1].min() < xy[:, 1].max() < y1
    # a crop is a zoom: finer pixels, fewer vertices
    assert crop.pixel_size[1] < full.pixel_size[1] / 2
    assert crop.vertex_mask.sum() < full.vertex_mask.sum()
    # the mask only removes pixels, and what is left is visual cortex
    assert (masked.pixel_mask <= crop.pixel_mask).all() and masked.pixel_mask.sum() < crop.pixel_mask.sum()
    lab = masked.project_labels(va)
    assert (lab[masked.pixel_mask] > 0).mean() > 0.97
    assert (va.labels[masked.vertex_mask] > 0).mean() > 0.8          # plus a rim of neighbours
    assert set(np.nonzero(masked.vertex_mask)[0]) <= set(np.nonzero(crop.vertex_mask)[0])


def test_equal_aspect_and_construction_cache():
    p = FlatmapProjector((64, 256), aspect="equal")
    dy, dx = p.pixel_size
    assert abs(dy - dx) < 1e-9
    assert FlatmapProjector(128)._r is FlatmapProjector(128)._r          # cached, not rebuilt
    with pytest.raises(ValueError):
        p.matrix.data[0] = 1.0                                          # read-only


def test_project_labels_majority(p128):
    labels = np.zeros(N, int)
    labels[K:] = 7                                                      # right hemisphere
    img = p128.project_labels(labels)
    w = p128.resolution[1]
    assert (img[:, w // 2:][p128.pixel_mask[:, w // 2:]] == 7).all()
    assert (img[:, : w // 2] == 0).all() and (img[~p128.pixel_mask] == 0).all()


def test_errors_are_helpful(p128):
    with pytest.raises(InvalidInputError, match=r"expects 20484 .*got 5000.*vertices="):
        p128.transform(np.zeros(5000))
    with pytest.raises(InvalidInputError, match="327684"):
        p128.transform(np.zeros((2, 10242)))
    bad = np.zeros(N)
    bad[17] = np.nan
    with pytest.raises(InvalidInputError, match=r"non-finite.*\(17,\)"):
        p128.transform(bad)
    with pytest.raises(InvalidInputError, match="non-finite"):
        p128.transform(torch.from_numpy(bad))
    with pytest.raises(InvalidInputError, match="must match"):
        p128.transform(np.zeros(10), vertices=np.arange(11))
    with pytest.raises(InvalidInputError, match="0..20483"):
        p128.transform(np.zeros(2), vertices=[0, 20484])
    with pytest.raises(InvalidInputError, match=r"\(\.\.\., 128, 128\).*got \(1, 64, 64\)"):
        p128.inverse(np.zeros((1, 64, 64)))
    with pytest.raises(InvalidInputError, match="W even"):
        FlatmapProjector((64, 63))
    with pytest.raises(InvalidInputError, match="crop"):
        FlatmapProjector(64, crop="V7")


def test_plot_flatmap_figure(p128, surf):
    from matplotlib.figure import Figure

    sulc = np.concatenate([surf.left.sulc, surf.right.sulc])
    fig = plot_flatmap(sulc, p128, title="sulc")
    assert isinstance(fig, Figure) and len(fig.axes) == 2                # image + colour bar
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"L", "R", "V1", "V2", "V3"} <= texts
    assert fig.axes[0].get_title() == "sulc"
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo == -hi                                                    # signed data: symmetric
    fig2 = plot_flatmap(p128.transform(sulc), rois=False, colorbar=False)   # an image, no projector
    assert len(fig2.axes) == 1 and {"L", "R"} <= {t.get_text() for t in fig2.axes[0].texts}
    assert "V1" not in {t.get_text() for t in fig2.axes[0].texts}
    fig3 = plot_flatmap(np.arange(300.0), p128, vertices=np.arange(300), vmin=0, vmax=1)
    assert fig3.axes[0].images[0].get_clim() == (0, 1)


def test_from_gifti_equals_default_projector(tmp_path):
    import nibabel as nib
    from nilearn import datasets

    mesh = datasets.load_fsaverage("fsaverage5")["flat"]
    paths = []
    for hemi, name in (("left", "lh.flat.gii"), ("right", "rh.flat.gii.gz")):
        part = mesh.parts[hemi]
        img = nib.gifti.GiftiImage(darrays=[
            nib.gifti.GiftiDataArray(np.asarray(part.coordinates, np.float32),
                                     intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(np.asarray(part.faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])
        data = img.to_bytes()
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        paths.append(path)
    for kw in (dict(resolution=96), dict(resolution=64, crop="visual")):
        g = FlatmapProjector.from_gifti(*paths, **kw)
        d = FlatmapProjector(**kw)
        assert g.n_vertices == N
        np.testing.assert_array_equal(g.pixel_mask, d.pixel_mask)
        assert abs(g.matrix - d.matrix).max() < 1e-9
    with pytest.raises(FileNotFoundError, match="rh.missing.gii"):
        FlatmapProjector.from_gifti(paths[0], tmp_path / "rh.missing.gii")
