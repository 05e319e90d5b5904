"""The one cache every method trains from: flatmap or voxel inputs, latents, text table, image features."""
import numpy as np
import pytest
import torch

from brainrecon.backbones.hub import load_backbone
from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld
from brainrecon.errors import InvalidInputError
from brainrecon.training.cache import cache_stage_data, make_stage_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    return make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=8, n_train=12), progress=False)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("toy")


def test_voxel_cache_keeps_each_subjects_vectors_and_shares_the_image_tables(world, backbone):
    ds = make_stage_dataset(world, ["subj01", "subj02"], "test", 0, None, representation="voxels")
    data = cache_stage_data(ds, backbone, progress=False, feature_layers=(1,))
    assert data.maps is None and len(data) == len(ds)
    for s, rec in zip(ds.subjects, ds.records):
        np.testing.assert_array_equal(data.voxels[s].numpy(), rec.responses)
        rows = data.rows(s)
        assert len(rows) == len(rec) and torch.equal(data.image_keys[rows], torch.as_tensor(rec.image_keys))
    # every row's targets are those of its own image: the same image gives the same latent and features
    i = 3
    item = ds[i]
    img = backbone.resize(item["image"][None])
    torch.testing.assert_close(data.latents[i], backbone.encode_latents(img)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.features[1][i], backbone.encode_image_features(img, layers=(1,))[1][0],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(data.text([i])[0], backbone.encode_text([item["caption"]])[0], atol=1e-5, rtol=1e-5)
    # a subset keeps, per subject, the vectors of its own rows
    sub = data.subset(torch.arange(len(data) - 1, -1, -2))
    for s in ds.subjects:
        assert torch.equal(sub.voxels[s], data.voxels[s][torch.isin(data.rows(s), torch.arange(len(data) - 1, -1, -2))]
                           .flip(0))
    with pytest.raises(InvalidInputError, match="subj07"):
        data.rows("subj07")
    with pytest.raises(InvalidInputError, match="per subject"):
        data.batch([0, 1])


def test_flatmap_and_voxel_caches_agree_on_the_image_side(world, backbone):
    flat = cache_stage_data(make_stage_dataset(world, ["subj01"], "test", 32, "visual"), backbone, progress=False)
    vox = cache_stage_data(make_stage_dataset(world, ["subj01"], "test", 0, None, representation="voxels"), backbone,
                           progress=False)
    assert flat.maps.shape[-2:] == (32, 32) and flat.voxels is None
    assert torch.equal(flat.latents, vox.latents) and torch.equal(flat.text_table, vox.text_table)


def test_bad_inputs_are_refused_before_any_compute(world):
    ds = make_stage_dataset(world, ["subj01"], "test", 0, None, representation="voxels")
    with pytest.raises(InvalidInputError, match="image encoder"):
        cache_stage_data(ds, None, feature_layers=(1,))
    with pytest.raises(InvalidInputError, match="BrainImageDataset"):
        cache_stage_data(list(range(3)))


def test_a_run_can_ask_for_more_shared_test_images():
    from brainrecon.training.cache import load_stage_world

    kind, w = load_stage_world("toy", "smoke", seed=0, toy_n_test=7)
    assert kind == "toy" and w.config.n_test == 7 and len(w.subject("subj01").test_images) == 7
