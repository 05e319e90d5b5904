import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from brainrecon.data.pairs import (
    BrainRecords,
    SubjectBatchSampler,
    make_nsd_dataset,
    make_toy_dataset,
    records_from_toyworld,
)
from brainrecon.data.surface import FlatmapProjector
from brainrecon.errors import InvalidInputError


@pytest.fixture(scope="module")
def world():
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    return make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=12, n_train=20), progress=False)


@pytest.fixture(scope="module")
def projector():
    return FlatmapProjector(32)


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory):
    from brainrecon.data.nsd_fixture import make_nsd_fixture

    return make_nsd_fixture(tmp_path_factory.mktemp("nsd") / "nsd", subjects=(1, 2), n_sessions=1,
                            spaces=("func1pt8mm", "fsaverage"))


def test_toy_records_average_repeats(world):
    s = world.subjects[world.subject_ids[0]]
    rec = records_from_toyworld(world, s.id, repeats="average")
    assert len(rec) == len(np.unique(s.trial_image))
    assert (rec.n_repeats == world.config.n_repeats).all()
    k = int(rec.image_keys[0])
    np.testing.assert_allclose(rec.responses[0], s.responses[s.trial_image == k].mean(0), atol=1e-5)
    assert set(rec.image_keys[rec.split == "test"]) == set(int(i) for i in s.test_images)
    each = records_from_toyworld(world, s.id, repeats="each")
    assert len(each) == len(s.trial_image) and (each.n_repeats == 1).all()
    assert rec.captions[0] == [world.scenes.captions[k]]


def test_toy_flatmap_items_match_projector(world, projector):
    ds = make_toy_dataset(world, split="test", projector=projector)
    n_test = len(world.test_images)
    assert len(ds) == 2 * n_test  # every subject sees the shared test set
    item = ds[n_test + 1]  # second subject, second test image
    assert item["subject"] == 1 and item["brain"].shape == (1, 32, 32)
    assert item["image"].shape == (3, 64, 64) and 0 <= item["image"].min() and item["image"].max() <= 1
    s = world.subjects[world.subject_ids[1]]
    rec = records_from_toyworld(world, s.id).select("test")
    expected = projector.transform(rec.responses[1], vertices=s.vertices)
    np.testing.assert_allclose(item["brain"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal((item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
                                  world.scenes.images[item["image_key"]])
    assert item["caption"] == world.scenes.captions[item["image_key"]]
    # flatmaps of different subjects share one space: they batch together
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["brain"].shape == (4, 1, 32, 32) and len(batch["caption"]) == 4


def test_voxels_need_single_subject_batches(world):
    ds = make_toy_dataset(world, representation="voxels", image_size=32)
    sizes = {len(ds.records[i].responses[0]) for i in range(2)}
    assert len(sizes) == 2  # native vertex counts differ between subjects
    sampler = SubjectBatchSampler(ds, batch_size=5, seed=1)
    seen = []
    for batch in DataLoader(ds, batch_sampler=sampler):
        assert len(set(batch["subject"].tolist())) == 1
        assert batch["image"].shape[-1] == 32
        seen += batch["image_key"].tolist()
    assert len(seen) == len(ds)
    # epochs reshuffle; same seed and epoch reproduce
    assert list(SubjectBatchSampler(ds, 5, seed=1)) == list(SubjectBatchSampler(ds, 5, seed=1))
    sampler2 = SubjectBatchSampler(ds, 5, seed=1)
    assert list(sampler2) != list(sampler2)


def test_nsd_pairs_flatmap_and_voxels(nsd_root, projector):
    from brainrecon.data.nsd import load_nsd

    surf = [load_nsd(nsd_root, s, space="fsaverage", sessions=[1], progress=False) for s in (1, 2)]
    ds = make_nsd_dataset(surf, split="all", projector=projector)
    assert len(ds) == surf[0].n_rows + surf[1].n_rows
    item = ds[0]
    assert item["brain"].shape == (1, 32, 32) and item["image"].shape[0] == 3
    expected = projector.transform(surf[0].betas[0], vertices=surf[0].vertices)
    np.testing.assert_allclose(item["brain"].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(
        (item["image"] * 255).round().byte().permute(1, 2, 0).numpy(),
        surf[0].load_images([surf[0].image_ids[0]])[0])
    vol = load_nsd(nsd_root, 1, space="func1pt8mm", sessions=[1], progress=False)
    with pytest.raises(InvalidInputError, match="space='fsaverage'"):
        make_nsd_dataset(vol, projector=projector)
    vds = make_nsd_dataset(vol, split="test", representation="voxels")
    assert vds[0]["brain"].shape == (vol.n_features,)
    assert torch.allclose(vds[0]["brain"], torch.from_numpy(vol.subset("test").betas[0]))


def test_records_refuse_bad_input():
    ok = dict(subject="s", responses=np.zeros((3, 4), np.float32), image_keys=np.arange(3),
              split=np.array(["train"] * 3), n_repeats=np.ones(3, int), captions=[[]] * 3)
    BrainRecords(**ok)
    with pytest.raises(InvalidInputError, match="image_keys has 2 rows"):
        BrainRecords(**{**ok, "image_keys": np.arange(2)})
    with pytest.raises(InvalidInputError, match="5 vertices but 4 response columns"):
        BrainRecords(**ok, vertices=np.arange(5))
    bad = ok["responses"].copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match=r"index \(1, 2\)"):
        BrainRecords(**{**ok, "responses": bad})
