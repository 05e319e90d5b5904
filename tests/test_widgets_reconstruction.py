"""view_reconstruction: drive the sliders and pickers, look at the images and figures (no display)."""
from types import SimpleNamespace

import pytest
import torch

from brainrecon.errors import InvalidInputError
from reconstructor_helpers import make_model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    from brainrecon.backbones import load_backbone
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
    from brainrecon.sampling import BrainToImagePipeline, make_test_maps

    bb = load_backbone("toy")
    pipe = BrainToImagePipeline.from_backbone(bb, make_model(bb), num_inference_steps=2)
    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=1, n_test=4, n_train=2), progress=False)
    return SimpleNamespace(pipe=pipe, data=make_test_maps(pipe, world, "subj01"))


def test_sliders_resample_the_grid(env):
    from brainrecon.widgets import view_reconstruction

    view = view_reconstruction(env.pipe, env.data, n=3)
    assert view.images.shape == (3, 3, 32, 32) and view.guidance_scale.value == 5.0
    first_fig, first, first_png = view.figure, view.images.clone(), view.panel.value
    assert len(first_fig.axes) == 2 * 3 and "α=1, CFG=5" in first_fig.axes[3].get_ylabel()
    assert first_png[:4] == b"\x89PNG" and view.status.value.startswith("α = 1 · CFG = 5")
    view.control_scale.value = 0.0  # observers fire synchronously outside a kernel
    assert view.figure is not first_fig and "α=0," in view.figure.axes[3].get_ylabel()
    assert not torch.allclose(view.images, first, atol=1e-3)
    assert view.panel.value[:4] == b"\x89PNG" and view.panel.value != first_png   # what the page shows moved
    assert view.status.value.startswith("α = 0 · CFG = 5")
    view.control_scale.value = 1.0
    assert torch.equal(view.images, first)  # same seeds: back to the same images
    view.guidance_scale.value = 1.0
    assert not torch.allclose(view.images, first, atol=1e-3)
    want = env.pipe(env.data["maps"][:3], control_scale=1.0, guidance_scale=1.0, num_inference_steps=2,
                    generator=[torch.Generator().manual_seed(i) for i in range(3)]).images
    assert torch.allclose(view.images, want, atol=1e-5)


def test_swap_picker_and_flatmap_panel(env):
    from brainrecon.widgets import view_reconstruction

    view = view_reconstruction(env.pipe, env.data["maps"], targets=env.data["targets"], n=2, seed=7)
    assert view.layout_scan.value == 0 and view.semantic_scan.value == 1
    fig, img, png = view.swap_figure, view.swap_image.clone(), view.swap_panel.value
    assert "scan 0" in fig.axes[0].get_title() and "semantics 1" in fig.axes[2].get_title()
    assert png[:4] == b"\x89PNG"
    view.semantic_scan.value = 0  # semantics of the layout scan itself: the plain reconstruction
    assert view.swap_figure is not fig and torch.allclose(view.swap_image, view.images[0], atol=1e-5)
    view.semantic_scan.value = 3
    assert not torch.allclose(view.swap_image, img, atol=1e-3) and view.swap_panel.value != png
    view.layout_scan.value = 2
    assert "scan 2" in view.swap_figure.axes[0].get_title()
    assert len(view.swap_figure.axes[0].images) == 1  # the input flatmap is drawn
    with pytest.raises(InvalidInputError, match=r"\(N, 1, H, W\)"):
        view_reconstruction(env.pipe, torch.zeros(32, 32))
