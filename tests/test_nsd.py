"""NSD reader on a miniature NSD tree written in the official layout (brainrecon.data.nsd_fixture)."""
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.io import loadmat

from brainrecon.data import nsd as nsd_module
from brainrecon.data import nsd_fixture
from brainrecon.data.nsd import (NSDSubjectData, load_nsd, load_nsd_images, nsd_paths,
                                 nsd_trial_table, parse_nsd_subject, read_mgh_betas)
from brainrecon.data.nsd_fixture import fixture_betas, fixture_image, make_nsd_fixture
from brainrecon.errors import DataNotFoundError, InvalidInputError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # func1pt8mm (.nii.gz + .hdf5) and MNI for 2 sessions, int16 fsaverage5 for 1 (~53 MB)
    return make_nsd_fixture(tmp_path_factory.mktemp("nsd") / "nsd", subjects=(1,), n_sessions=2,
                            spaces=("func1pt8mm", "MNI", "fsaverage"), fsaverage_dtype="int16",
                            fsaverage_sessions=1)


def _raw_masked(root, session, space="func1pt8mm"):
    """Masked raw int16 betas of one session read with nibabel only: (750, n_voxels)."""
    p = nsd_paths(root)
    mask = np.asanyarray(nib.load(p.roi(1, space)).dataobj) > 0
    vol = np.asanyarray(nib.load(p.betas(1, space, session)).dataobj)
    assert vol.dtype == np.int16
    return vol[mask].T, mask


# ----------------------------------------------------------------------------- design
def test_test_set_counts_match_nsd(root):
    for n, (imgs, trials, train) in {37: (982, 2770, 8859), 40: (1000, 3000, 9000)}.items():
        t = nsd_trial_table(root, 1, n_sessions=n)
        assert len(t) == n * 750
        assert t.loc[t.shared, "image_id"].nunique() == imgs and t.shared.sum() == trials
        assert t.loc[~t.shared, "image_id"].nunique() == train
        assert set(t.split) == {"train", "test"}
    for subj, n, imgs, trials in ((3, 32, 930, 2371), (4, 30, 907, 2188), (3, 29, None, 2113)):
        t = nsd_trial_table(root, subj, n_sessions=n)
        assert t.shared.sum() == trials
        assert imgs is None or t.loc[t.shared, "image_id"].nunique() == imgs
    runs = nsd_trial_table(root, 1, sessions=[2]).groupby("run").size().to_numpy()
    assert runs.tolist() == [63, 62] * 6


def test_trial_to_image_matches_hand_computation(root):
    p = nsd_paths(root)
    d = loadmat(p.expdesign)
    mo, sim = d["masterordering"].ravel().astype(int), d["subjectim"].astype(int)
    t = nsd_trial_table(root, "subj01", n_sessions=40).set_index("trial")
    for trial in (0, 1, 749, 750, 27749, 29999):
        assert t.loc[trial, "image_id"] == sim[0, mo[trial] - 1] - 1
        assert t.loc[trial, "shared"] == (mo[trial] <= 1000)
        assert t.loc[trial, "session"] == trial // 750 + 1
    resp = pd.read_csv(p.responses(1), sep="\t")
    np.testing.assert_array_equal(resp["73KID"].to_numpy() - 1, t["image_id"].to_numpy())
    info = pd.read_csv(p.stim_info, index_col=0)
    for trial in (0, 1234, 29999):   # stim info's subject1_repN are 1-based trial numbers
        row = info.loc[t.loc[trial, "image_id"]]
        assert trial + 1 in row[["subject1_rep0", "subject1_rep1", "subject1_rep2"]].tolist()
    assert set(d["sharedix"].ravel().astype(int) - 1) == set(t.loc[t.shared, "image_id"])


def test_subject_spellings():
    assert {parse_nsd_subject(s) for s in (1, "1", "01", "subj01", "sub-01")} == {1}
    for bad in (0, 9, "subj9", "subj10", "s1", 1.0):
        with pytest.raises(InvalidInputError, match="'subject' must be one of") as e:
            parse_nsd_subject(bad)
        assert "subj08" in str(e.value)


# ----------------------------------------------------------------------------- betas
def test_int16_volume_divided_by_300(root):
    d = load_nsd(root, 1, sessions=[1], zscore=False, average="none", captions=False)
    raw, mask = _raw_masked(root, 1)
    assert d.betas.dtype == np.float32 and d.betas.shape == (750, mask.sum())
    np.testing.assert_allclose(d.betas, raw / 300.0, rtol=0, atol=1e-6)
    # the planted values come back (to int16 rounding)
    planted = fixture_betas(d.image_ids, d.trial_ids, np.flatnonzero(mask), 1)
    np.testing.assert_allclose(d.betas, planted, atol=0.5 / 300 + 1e-6)
    np.testing.assert_array_equal(d.voxel_mask, mask)
    assert d.affine is not None and d.affine[0, 0] == pytest.approx(1.8)


def test_nifti_and_hdf5_give_identical_betas(root, monkeypatch):
    kw = dict(sessions=[1, 2], captions=False)
    a = load_nsd(root, 1, volume_format="nii.gz", **kw)
    b = load_nsd(root, 1, volume_format="hdf5", **kw)
    np.testing.assert_array_equal(a.betas, b.betas)
    np.testing.assert_array_equal(a.image_ids, b.image_ids)
    # reading in slabs of trials (as for large real volumes) changes nothing
    monkeypatch.setattr(nsd_module._VolumeReader, "slab_bytes", 8 * 9 * 7 * 2 * 100)
    for fmt in ("nii.gz", "hdf5"):
        np.testing.assert_array_equal(load_nsd(root, 1, volume_format=fmt, **kw).betas, a.betas)


def test_nsdgeneral_mask_count(root):
    d = load_nsd(root, 1, sessions=[1], captions=False)
    roi = np.asanyarray(nib.load(nsd_paths(root).roi(1, "func1pt8mm")).dataobj)
    assert set(np.unique(roi)) == {-1, 0, 1}
    assert d.n_features == int((roi > 0).sum()) == int(d.voxel_mask.sum())
    m = load_nsd(root, 1, "MNI", sessions=[1], captions=False)
    assert m.beta_version == "betas_fithrf" and m.voxel_mask.shape == (7, 8, 6)
    u = load_nsd(root, 1, "MNI", sessions=[1], captions=False, mask=np.ones((7, 8, 6), bool))
    assert u.n_features == 7 * 8 * 6
    with pytest.raises(DataNotFoundError, match="Pass mask="):
        load_nsd(root, 1, "MNI", sessions=[1], mask=root / "no_mask.nii.gz")


def test_zscore_per_session_per_voxel(root):
    d = load_nsd(root, 1, sessions=[1, 2], average="none", captions=False)
    sess = d.trials.sort_values("row")["session"].to_numpy()
    for s in (1, 2):
        x = d.betas[sess == s].astype(np.float64)
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-4)
    raw, _ = _raw_masked(root, 2)
    x = raw / 300.0
    np.testing.assert_allclose(d.betas[sess == 2], (x - x.mean(0)) / (x.std(0) + 1e-6), atol=1e-4)
    e = load_nsd(root, 1, sessions=[1], average="none", zscore_exclude_shared=True, captions=False)
    train = e.split == "train"
    np.testing.assert_allclose(e.betas[train].mean(0), 0, atol=1e-5)
    assert np.abs(e.betas[~train].mean(0)).max() > 1e-3


@pytest.mark.parametrize("zscore", [False, True])
def test_repeat_average_is_mean_of_right_trials(root, zscore):
    single = load_nsd(root, 1, sessions=[1, 2], average="none", zscore=zscore, captions=False)
    avg = load_nsd(root, 1, sessions=[1, 2], average="test", zscore=zscore, captions=False)
    t = single.trials
    test_rows = np.flatnonzero(avg.split == "test")
    assert (avg.n_repeats[test_rows] >= 2).any()
    assert avg.image_ids[test_rows].size == np.unique(avg.image_ids[test_rows]).size
    for r in test_rows:
        trials = t.loc[t.image_id == avg.image_ids[r], "row"].to_numpy()
        np.testing.assert_allclose(avg.betas[r], single.betas[trials].mean(0), atol=1e-5)
        assert avg.n_repeats[r] == trials.size
        assert (avg.trial_ids[r] == -1) == (trials.size > 1)
    train = avg.split == "train"
    assert (avg.n_repeats[train] == 1).all() and (avg.trial_ids[train] >= 0).all()
    alls = load_nsd(root, 1, sessions=[1, 2], average="all", zscore=zscore, captions=False)
    assert alls.n_rows == t.image_id.nunique() and alls.n_repeats.sum() == 1500
    assert avg.subset("test").n_rows == test_rows.size


def test_fsaverage_int16_mgh_reduced_and_roi(root):
    d = load_nsd(root, 1, "fsaverage", sessions=[1], zscore=False, average="none", captions=False)
    assert d.betas.shape == (750, 20484) and d.voxel_mask is None
    np.testing.assert_array_equal(d.vertices, np.arange(20484))
    planted = fixture_betas(d.image_ids, d.trial_ids, np.arange(20484), 1)
    np.testing.assert_allclose(d.betas, planted, atol=0.5 / 300 + 1e-6)   # int16 / 300
    r = load_nsd(root, 1, "fsaverage", sessions=[1], roi="nsdgeneral", zscore=False,
                 average="none", captions=False)
    lab = [np.asarray(nib.load(nsd_paths(root).roi(1, "fsaverage", hemi=h)).dataobj).ravel()
           for h in ("lh", "rh")]
    assert r.n_features == sum(int((x[:10242] > 0).sum()) for x in lab)
    np.testing.assert_array_equal(r.betas, d.betas[:, r.vertices])


def test_mgh_dtype_and_vertex_slicing(tmp_path):
    full = (np.arange(163842 * 3, dtype=np.float32).reshape(163842, 1, 1, 3) % 997) / 7
    nib.save(nib.MGHImage(full, np.eye(4)), tmp_path / "f.mgh")
    x = read_mgh_betas(tmp_path / "f.mgh", n_trials=None)                 # float: as is
    np.testing.assert_array_equal(x, full[:10242, 0, 0].T)
    assert read_mgh_betas(tmp_path / "f.mgh", 163842, n_trials=None).shape == (3, 163842)
    ints = (np.arange(10242 * 2).reshape(10242, 1, 1, 2) % 3000).astype(np.int16)
    nib.save(nib.MGHImage(ints, np.eye(4)), tmp_path / "i.mgh")
    np.testing.assert_allclose(read_mgh_betas(tmp_path / "i.mgh", n_trials=None),
                               ints[:, 0, 0].T / 300.0, atol=1e-6)   # int16: / 300
    nib.save(nib.MGHImage(np.zeros((5000, 1, 1, 2), np.float32), np.eye(4)), tmp_path / "w.mgh")
    with pytest.raises(InvalidInputError, match="163842"):
        read_mgh_betas(tmp_path / "w.mgh", n_trials=None)
    with pytest.raises(InvalidInputError, match="750"):
        read_mgh_betas(tmp_path / "i.mgh")


# ----------------------------------------------------------------------------- stimuli
def test_captions_read_for_each_row(root):
    d = load_nsd(root, 1, sessions=[1])
    assert isinstance(d, NSDSubjectData) and len(d.captions) == d.n_rows
    assert "Expected layout" in d.description and "subj01" in repr(d)
    for i in (0, 7, d.n_rows - 1):
        caps = d.captions[i]
        assert len(caps) == 5 and caps[0] == f"A synthetic picture of NSD image {d.image_ids[i]}, caption 0."
    ann = nsd_paths(root).captions("train2017").parent
    moved = ann.with_name("annotations_off")
    ann.rename(moved)
    try:
        assert load_nsd(root, 1, sessions=[1]).captions is None
        with pytest.raises(DataNotFoundError, match="captions_"):
            load_nsd(root, 1, sessions=[1], captions=True)
    finally:
        moved.rename(ann)


def test_images_unsorted_and_duplicate_ids(root):
    d = load_nsd(root, 1, sessions=[1], captions=False)
    ids = [int(d.image_ids[5]), int(d.image_ids[2]), int(d.image_ids[5]), int(d.image_ids[0])]
    imgs = d.load_images(ids)
    assert imgs.shape == (4, 32, 32, 3) and imgs.dtype == np.uint8
    for im, i in zip(imgs, ids):
        np.testing.assert_array_equal(im, fixture_image(i, 32))
    assert imgs[0, 0, 5, 1] == 0 and imgs[0, -1, 5, 1] == 255      # rows run top to bottom
    assert load_nsd_images(root, []).shape == (0, 32, 32, 3)
    with pytest.raises(InvalidInputError, match="0-based 73k"):
        load_nsd_images(root, [73000])


# ----------------------------------------------------------------------------- bad input
def test_missing_root_lists_paths_card_and_toy_world(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        load_nsd(tmp_path / "nowhere", 1)
    msg = str(e.value)
    assert "nowhere/nsddata/experiments/nsd/nsd_expdesign.mat (missing)" in msg
    assert "data_cards/nsd.md" in msg and "toy world" in msg
    monkeypatch.delenv("BRAINRECON_NSD")
    with pytest.raises(DataNotFoundError, match=r"\$BRAINRECON_NSD: not set"):
        nsd_trial_table(subject=1)


def test_root_from_environment(root, monkeypatch):
    monkeypatch.setenv("BRAINRECON_NSD", str(root))
    assert len(nsd_trial_table(subject="subj01", sessions=[1])) == 750
    monkeypatch.setenv("BRAINRECON_NSD", str(root.parent / "elsewhere"))
    with pytest.raises(DataNotFoundError, match="BRAINRECON_NSD"):
        nsd_trial_table(subject=1)


def test_unknown_subject_and_nonexistent_sessions(root):
    with pytest.raises(InvalidInputError, match="'subject' must be one of"):
        load_nsd(root, "subj09")
    with pytest.raises(InvalidInputError, match=r"completed 40 NSD core sessions.*\[41\]"):
        load_nsd(root, 1, sessions=[2, 41])
    with pytest.raises(InvalidInputError, match="subj03 completed 32"):
        load_nsd(root, 3, n_sessions=37)
    with pytest.raises(InvalidInputError, match="either n_sessions or sessions"):
        load_nsd(root, 1, n_sessions=2, sessions=[1])


def test_missing_session_file_lists_every_path(root):
    with pytest.raises(DataNotFoundError) as e:
        load_nsd(root, 1, sessions=[1, 3, 4])
    msg = str(e.value)
    for s in (3, 4):
        for ext in (".nii.gz", ".hdf5", ".mat"):
            assert f"betas_session{s:02d}{ext} (missing)" in msg
    assert "betas_session01" not in msg and "data_cards/nsd.md" in msg
    with pytest.raises(DataNotFoundError, match="rh.betas_session02.mgh"):
        load_nsd(root, 1, "fsaverage", sessions=[1, 2])


def test_wrong_mask_shape_names_both_sides(root):
    with pytest.raises(InvalidInputError, match=r"\(8, 9, 7\).*\(3, 3, 3\)"):
        load_nsd(root, 1, sessions=[1], mask=np.ones((3, 3, 3), bool))
    with pytest.raises(InvalidInputError, match="3-D"):
        load_nsd(root, 1, sessions=[1], mask=np.ones((8, 9), bool))


def _single_session_tree(root, tmp_path, vol):
    """Copy the design and mask of ``root``, with session 1 replaced by ``vol``."""
    src, dst = nsd_paths(root), nsd_paths(tmp_path / "bad")
    for a, b in ((src.expdesign, dst.expdesign), (src.roi(1, "func1pt8mm"), dst.roi(1, "func1pt8mm"))):
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(a, b)
    path = dst.betas(1, "func1pt8mm", 1)
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return dst.root


def test_nan_betas_refused_with_subject_session_index(root, tmp_path):
    vol = np.asanyarray(nib.load(nsd_paths(root).betas(1, "func1pt8mm", 1)).dataobj) / np.float32(300)
    mask = np.asanyarray(nib.load(nsd_paths(root).roi(1, "func1pt8mm")).dataobj) > 0
    x, y, z = np.argwhere(mask)[3]
    vol = vol.astype(np.float32)
    vol[x, y, z, 17] = np.nan
    bad = _single_session_tree(root, tmp_path, vol)
    with pytest.raises(InvalidInputError) as e:
        load_nsd(bad, 1, sessions=[1], captions=False)
    msg = str(e.value)
    assert "subj01 session 1" in msg and "(17, 3)" in msg and "nonfinite='zero'" in msg
    d = load_nsd(bad, 1, sessions=[1], captions=False, average="none", nonfinite="zero")
    assert np.isfinite(d.betas).all() and d.betas[17, 3] == 0
    # float files are not divided by 300
    good = load_nsd(root, 1, sessions=[1], captions=False, average="none", zscore=False)
    raw = load_nsd(bad, 1, sessions=[1], captions=False, average="none", zscore=False,
                   nonfinite="zero")
    np.testing.assert_allclose(np.delete(raw.betas.ravel(), 17 * raw.n_features + 3),
                               np.delete(good.betas.ravel(), 17 * raw.n_features + 3), atol=1e-5)


def test_wrong_trial_count(root, tmp_path):
    vol = np.asanyarray(nib.load(nsd_paths(root).betas(1, "func1pt8mm", 1)).dataobj)[..., :700]
    bad = _single_session_tree(root, tmp_path, vol)
    with pytest.raises(InvalidInputError, match="700 trials.*750"):
        load_nsd(bad, 1, sessions=[1], captions=False)


def test_fixture_never_half_written(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nsd_fixture, "_write_images", boom)
    with pytest.raises(RuntimeError):
        make_nsd_fixture(tmp_path / "nsd", spaces=(), n_sessions=1)
    assert not (tmp_path / "nsd").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not empty"):
        make_nsd_fixture(tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
