import json

import numpy as np
import pytest

from brainrecon.data.pairs import make_toy_dataset
from brainrecon.errors import InvalidInputError


@pytest.fixture(scope="module")
def world():
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    return make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=6, n_train=10), progress=False)


def _title(fig):
    return fig.axes[1].get_title()


def test_view_flatmap_callbacks_redraw(world):
    from brainrecon.widgets import view_flatmap

    view = view_flatmap(world, resolution=48)
    first, first_png = view.figure, view.panel.value
    assert first_png[:4] == b"\x89PNG"
    assert world.subject_ids[0] in _title(first) and "image" in _title(first)
    assert view.image.max == len(world.test_images) - 1
    view.image.value = 3  # observer fires synchronously outside a kernel
    key = int(view.dataset[view.index]["image_key"])
    assert view.figure is not first and f"image {key}" in _title(view.figure)
    assert view.panel.value[:4] == b"\x89PNG" and view.panel.value != first_png
    assert key == int(np.sort(world.test_images)[3])
    view.subject.value = 1
    assert world.subject_ids[1] in _title(view.figure)
    n_lines = len(view.figure.axes[1].collections)
    view.rois.value = False  # ROI outlines are contour collections
    assert len(view.figure.axes[1].collections) < n_lines
    with pytest.raises(InvalidInputError, match="representation='flatmap'"):
        view_flatmap(make_toy_dataset(world, representation="voxels"))


def test_overview_writes_figures_and_numbers(world, tmp_path):
    from brainrecon.plotting import write_toyworld_overview

    summary = write_toyworld_overview(world, tmp_path, resolution=48)
    on_disk = json.loads((tmp_path / "overview.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for name in summary["figures"]:
        assert (tmp_path / name).stat().st_size > 5000
    assert summary["n_subjects"] == 2
    assert summary["voxel_counts"] == {s: world.subject(s).n_vox for s in world.subject_ids}
    nc = summary["noise_ceiling_single_trial"]
    assert nc["early"] > nc["other"] and nc["early"] <= summary["noise_ceiling_avg_repeats"]["early"]


def test_subject_flatmaps_refuses_training_image(world):
    from brainrecon.plotting import plot_subject_flatmaps

    train_only = int(world.subject(world.subject_ids[0]).train_images[0])
    with pytest.raises(InvalidInputError, match="shared test set"):
        plot_subject_flatmaps(world, image=train_only)
    fig = plot_subject_flatmaps(world)
    assert len([a for a in fig.axes if a.get_title()]) == 3
