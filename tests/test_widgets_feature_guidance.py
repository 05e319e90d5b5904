"""view_feature_guidance: the κ (log) and η sliders resample the guided row, the status names the
guided steps, the κ × η sweep draws one row per setting; driven through the widgets' callbacks."""
import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.sampling import BrainToImagePipeline
from brainrecon.widgets import view_feature_guidance
from reconstructor_helpers import make_neuraldiffuser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def view():
    from brainrecon.backbones import load_backbone

    bb = load_backbone("toy")
    pipe = BrainToImagePipeline.from_backbone(bb, make_neuraldiffuser(bb))
    vox = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    targets = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return view_feature_guidance(pipe, vox, targets=targets, n=2, num_inference_steps=8, kappa=1e-3)


def test_sliders_resample_the_guided_row_and_count_the_guided_steps(view):
    assert view.images.shape == (2, 3, 32, 32) and view.panel.value[:4] == b"\x89PNG"
    assert view.guided_steps == 1 and "1 of 6 steps guided" in view.status.value      # 8 × 0.75 = 6 run
    before, unguided = view.images.clone(), view.unguided.clone()
    view.eta.value = 1.0
    assert view.guided_steps == 6 and "6 of 6 steps guided" in view.status.value
    assert not torch.allclose(view.images, before, atol=1e-4) and torch.equal(view.unguided, unguided)
    view.kappa.value = 1e-6                                        # log slider: tiny κ ≈ unguided
    assert (view.images - view.unguided).abs().max() < (before - view.unguided).abs().max() + 1e-3
    assert [a.get_title() for a in view.figure.axes][:1]          # the figure behind the PNG is kept


def test_the_sweep_draws_one_row_per_kappa_eta_setting(view):
    view.draw_sweep()
    keys = set(view.sweep_images)
    assert (0.0, 0.2) in keys and len(keys) == 1 + 2 * 3
    assert view.sweep_panel.value[:4] == b"\x89PNG"
    a, b = view.sweep_images[(0.0, 0.2)], view.sweep_images[(1e-2, 1.0)]
    assert not torch.allclose(a, b, atol=1e-4)


def test_bad_voxels_are_refused(view):
    with pytest.raises(InvalidInputError, match=r"voxel vectors \(N, V\)"):
        view_feature_guidance(view.pipe, torch.zeros(2, 1, 32, 32))
