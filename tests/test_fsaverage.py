import numpy as np
import pytest

from brainrecon.data.fsaverage import (
    AREA_NAMES,
    load_fsaverage5,
    load_visual_areas,
    reduce_to_fsaverage5,
)
from brainrecon.errors import InvalidInputError


def test_surface_shapes_and_flat_patch():
    s = load_fsaverage5()
    assert s.n_vertices == 20484
    for h in (s.left, s.right):
        assert h.flat.shape == (10242, 2) and h.sphere.shape == (10242, 3)
        assert h.faces.shape == (20480, 3)
        # the medial wall is cut out of the flat patch (nilearn: 9465 / 9537 vertices on it)
        assert 9000 < h.on_flat.sum() < 10242
        assert h.flat_faces.max() < 10242
    assert s.on_flat.shape == (20484,)
    left, right = s.split(np.arange(20484))
    assert left[-1] == 10241 and right[0] == 10242


def test_surface_arrays_are_read_only():
    with pytest.raises(ValueError):
        load_fsaverage5().left.flat[0, 0] = 1.0


def test_reduce_to_fsaverage5_takes_first_vertices_of_each_hemisphere():
    full = np.arange(2 * 163842, dtype=float)[None].repeat(2, 0)
    red = reduce_to_fsaverage5(full)
    assert red.shape == (2, 20484)
    assert red[0, 10241] == 10241 and red[0, 10242] == 163842
    one = reduce_to_fsaverage5(np.arange(163842), axis=0)
    np.testing.assert_array_equal(one, np.arange(10242))
    same = np.ones(20484)
    assert reduce_to_fsaverage5(same) is same
    with pytest.raises(InvalidInputError, match="163842"):
        reduce_to_fsaverage5(np.zeros(5000))


def test_fsaverage5_is_nested_in_fsaverage_sphere_geometry():
    # fsaverage5 vertices lie on the unit-sphere icosahedron: the 12 first vertices are
    # the icosahedron's corners, equally spaced (nesting is what reduce_to_fsaverage5 relies on)
    sph = load_fsaverage5().left.sphere
    v = sph[:12] / np.linalg.norm(sph[:12], axis=1, keepdims=True)
    d = np.sort(np.arccos(np.clip(v @ v.T, -1, 1)), axis=1)[:, 1:6]
    np.testing.assert_allclose(d, np.arctan(2.0), atol=1e-3)   # icosahedron edge angle


def test_geometric_visual_areas_are_plausible():
    va = load_visual_areas("geometric")
    s = load_fsaverage5()
    assert va.labels.shape == (20484,) and va.source == "geometric"
    for area in (1, 2, 3):
        left, right = s.split(va.labels == area)
        assert 300 < left.sum() + right.sum() < 700 and left.sum() > 100 and right.sum() > 100
    early = va.mask("early")
    # occipital: early visual vertices are far posterior on the pial surface
    pial_y = np.concatenate([s.left.pial[:, 1], s.right.pial[:, 1]])
    assert np.median(pial_y[early]) < -80
    assert np.all(np.isfinite(va.eccentricity[early])) and np.all(np.isnan(va.eccentricity[va.labels == 0]))
    assert np.nanmin(va.angle) >= 0 and np.nanmax(va.angle) <= 180
    # eccentricity grows away from the foveal confluence along V1
    assert np.nanmax(va.eccentricity[va.mask("V1")]) > 10 * np.nanmin(va.eccentricity[va.mask("V1")])
    assert set(va.present()) <= set(AREA_NAMES)
    assert va.mask("higher").sum() > 300
    assert not (va.mask("early") & va.mask("higher")).any()


def test_visual_area_errors():
    with pytest.raises(InvalidInputError, match="'source' must be one of"):
        load_visual_areas("atlas-x")
    with pytest.raises(InvalidInputError, match="'area' must be one of"):
        load_visual_areas().mask("V9")
    try:
        import neuropythy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="brainrecon\\[atlas\\]"):
            load_visual_areas("benson")
        assert load_visual_areas("auto").source == "geometric"
