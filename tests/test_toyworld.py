import numpy as np
import pytest

from brainrecon.data import toybrain as tb
from brainrecon.data.fsaverage import load_fsaverage5
from brainrecon.data.toyworld import (ToyWorldConfig, load_toyworld, make_toyworld, ncsnr,
                                      noise_ceiling_percent, plot_noise_ceiling,
                                      plot_subject_vertices, save_toyworld)
from brainrecon.errors import CheckpointError, DataNotFoundError, InvalidInputError

N = 20484


@pytest.fixture(scope="module")
def world():
    return make_toyworld(ToyWorldConfig.smoke(), progress=False)


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("tw") / "world"
    save_toyworld(world, path)
    return path


def test_default_config():
    c = ToyWorldConfig()
    assert c.n_subjects >= 8 and c.n_repeats == 3 and c.n_test >= 100
    assert c.n_images == c.n_test + c.n_subjects * c.n_train
    with pytest.raises(InvalidInputError):
        make_toyworld(ToyWorldConfig.smoke(), n_subject=3)   # typo
    with pytest.raises(InvalidInputError):
        ToyWorldConfig(n_repeats=1)


def test_determinism():
    tiny = ToyWorldConfig.smoke(n_subjects=2, n_test=10, n_train=20, n_calibration=48)
    a, b = make_toyworld(tiny, progress=False), make_toyworld(tiny, progress=False)
    assert np.array_equal(a.scenes.images, b.scenes.images) and a.scenes.captions == b.scenes.captions
    for sid, s in a.subjects.items():
        t = b.subjects[sid]
        assert np.array_equal(s.vertices, t.vertices)
        assert np.array_equal(s.trial_image, t.trial_image)
        assert s.responses.tobytes() == t.responses.tobytes()
    assert a.encoding_model.to_arrays()["t_cat"].tobytes() == b.encoding_model.to_arrays()["t_cat"].tobytes()
    c = make_toyworld(tiny, seed=1, progress=False)
    assert not np.array_equal(c.subjects["subj01"].responses[:5, :5], a.subjects["subj01"].responses[:5, :5])
    assert not np.array_equal(c.scenes.images, a.scenes.images)


def test_subjects_and_trials(world):
    c = world.config
    assert world.subject_ids == [f"subj{i:02d}" for i in range(1, c.n_subjects + 1)]
    counts = [s.n_vox for s in world.subjects.values()]
    assert max(counts) >= 1.2 * min(counts)
    seen_train = set()
    for s in world.subjects.values():
        assert s.responses.dtype == np.float32 and s.responses.shape == (len(s.trial_image), s.n_vox)
        assert np.all(np.diff(s.vertices) > 0) and s.vertices.max() < N
        assert np.array_equal(s.test_images, world.test_images)
        imgs, n = np.unique(s.trial_image, return_counts=True)
        assert (n == 3).all()
        assert set(imgs) == set(world.test_images) | set(s.train_images)
        assert len(s.train_images) == c.n_train and not seen_train & set(s.train_images)
        seen_train |= set(s.train_images)
        assert not set(s.train_images) & set(world.test_images)
        assert s.area_mask("early").sum() > 100 and s.area_mask("higher").sum() > 50
        assert np.isfinite(s.responses).all()
    avg, imgs = world.average_repeats("subj02")
    s = world.subject("subj02")
    k = int(np.nonzero(imgs == 7)[0][0])
    assert np.allclose(avg[k], s.responses[s.trial_image == 7].mean(0), atol=1e-5)


def test_unknown_subject(world):
    with pytest.raises(InvalidInputError, match="subj01"):
        world.subject("subj99")
    with pytest.raises(InvalidInputError):
        world.noise_ceiling("nobody")


def test_noise_ceiling_range(world):
    df = world.noise_ceiling()
    assert set(df.subject) == set(world.subject_ids)
    m = df.groupby("area").nc_median.mean()
    assert 20 <= m["early"] <= 60 and 10 <= m["higher"] <= 45
    assert m["early"] > m["higher"] and m["other"] < 5
    assert (df.nc_avg >= df.nc).all()
    one = world.noise_ceiling("subj01")
    assert set(one.subject) == {"subj01"} and "V1" in set(one.area)


def test_ncsnr_formula():
    rng = np.random.default_rng(0)
    sig = rng.standard_normal((400, 3))
    trial = np.repeat(np.arange(400), 3)
    resp = sig[trial] * np.array([1.0, 0.5, 0.0]) + rng.standard_normal((1200, 3))
    snr = ncsnr(resp, trial)
    assert np.allclose(snr[:2], [1.0, 0.5], atol=0.1) and snr[2] < 0.15
    assert np.isclose(noise_ceiling_percent(np.array([1.0]), 1)[0], 50)
    assert np.isclose(noise_ceiling_percent(np.array([1.0]), 3)[0], 75)


def test_encoding_model_any_images(world):
    m = world.encoding_model
    imgs = world.scenes.images[:4]
    r = m(imgs)
    assert r.shape == (4, N) and r.dtype == np.float32
    assert np.all(r[:, m.area == 0] == 0) and r[:, m.area > 0].std() > 0
    r_float = m(imgs.astype(np.float32) / 255)
    assert np.allclose(r, r_float, atol=1e-4)
    import torch

    big = torch.nn.functional.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(),
                                          scale_factor=2, mode="nearest").permute(0, 2, 3, 1)
    r_big = m(big.numpy().astype(np.uint8))
    assert np.allclose(r_big, r, atol=1e-3)            # box downsampling is exact
    from brainrecon.data.scenes import make_scenes

    v = m.area > 0
    r128 = m(make_scenes(16, image_size=128, seed=0).images)   # same scenes, finer rendering
    assert np.corrcoef(r128[:, v].ravel(), m(world.scenes.images[:16])[:, v].ravel())[0, 1] > 0.8
    assert m(imgs[0]).shape == (1, N)
    with pytest.raises(InvalidInputError):
        m(np.zeros((2, 8, 8)))
    with pytest.raises(InvalidInputError):
        m(np.full((1, 8, 8, 3), np.nan, np.float32))


def test_subject_encode_predicts_data(world):
    s = world.subject("subj01")
    avg, imgs = world.average_repeats(s.id)
    pred = s.encode(world.scenes.images[imgs])
    e = np.nonzero(s.area_mask("early") & (pred.std(0) > 0.3))[0]
    r = [np.corrcoef(pred[:, v], avg[:, v])[0, 1] for v in e[:200]]
    assert np.median(r) > 0.5


def test_contralateral(world):
    m = world.encoding_model
    img = np.full((2, 64, 64, 3), 128, np.uint8)
    img[1, 26:38, 44:56] = (255, 255, 255)            # right half of the image
    d = m(img)
    d = d[1] - d[0]
    early = np.isin(m.area, tb.EARLY)
    left = np.arange(N) < N // 2
    assert d[early & left].mean() > 5 * abs(d[early & ~left].mean())
    assert d[early & left].mean() > 0.05


def test_retinotopy_smooth(world):
    m = world.encoding_model
    early = np.isin(m.area, tb.EARLY)
    surf = load_fsaverage5()
    faces = surf.left.flat_faces
    e = np.r_[faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [0, 2]]]
    e = e[early[e[:, 0]] & early[e[:, 1]]]
    xy = m.rf_xy
    near = np.linalg.norm(xy[e[:, 0]] - xy[e[:, 1]], axis=1).mean()
    idx = np.nonzero(early[: N // 2])[0]
    rng = np.random.default_rng(0)
    a, b = rng.choice(idx, 3000), rng.choice(idx, 3000)
    far = np.linalg.norm(xy[a] - xy[b], axis=1).mean()
    assert len(e) > 500 and near < 0.25 * far
    # left hemisphere sees the right visual field
    assert np.median(xy[idx, 0]) > 0 and np.median(xy[N // 2:][early[N // 2:], 0]) < 0
    # RF size grows with eccentricity
    ecc = np.linalg.norm(xy[idx], axis=1)
    assert np.corrcoef(ecc, m.rf_sigma[idx])[0, 1] > 0.8


def test_category_selectivity(world):
    s = world.subject("subj02")
    avg, imgs = world.average_repeats(s.id)
    X = avg[:, s.area_mask("higher")]
    y = world.scenes.category[imgs]
    tr = np.isin(imgs, s.train_images)
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Z = (X - mu) / sd
    cents = np.stack([Z[tr & (y == c)].mean(0) for c in range(10)])
    pred = ((Z[~tr][:, None] - cents) ** 2).sum(-1).argmin(1)
    assert (pred == y[~tr]).mean() > 0.3                       # chance 0.1


def test_save_load_roundtrip(world, saved):
    w2 = load_toyworld(saved)
    assert w2.config == world.config
    assert np.array_equal(w2.scenes.images, world.scenes.images)
    assert w2.scenes.captions == world.scenes.captions and w2.scenes.objects == world.scenes.objects
    assert np.array_equal(w2.test_images, world.test_images)
    for sid, s in world.subjects.items():
        t = w2.subject(sid)
        for k in ("vertices", "area", "responses", "trial_image", "train_images", "vertex_noise_sd"):
            assert np.array_equal(getattr(s, k), getattr(t, k)), k
        assert s.gain == t.gain and s.noise_sd == t.noise_sd
    imgs = world.scenes.images[:3]
    assert np.array_equal(w2.encoding_model(imgs), world.encoding_model(imgs))
    assert np.array_equal(w2.subject("subj03").encode(imgs), world.subject("subj03").encode(imgs))
    # saving again over an existing folder replaces it atomically
    save_toyworld(w2, saved)
    assert load_toyworld(saved).config == world.config


def test_load_errors(saved, tmp_path):
    import shutil

    with pytest.raises(DataNotFoundError, match="toyworld.json"):
        load_toyworld(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    (bad / "subjects" / "subj02.safetensors").unlink()
    with pytest.raises(DataNotFoundError, match="subj02.safetensors"):
        load_toyworld(bad)
    shutil.rmtree(bad)
    shutil.copytree(saved, bad)
    f = bad / "subjects" / "subj01.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="subj01.safetensors"):
        load_toyworld(bad)
    shutil.rmtree(bad)
    shutil.copytree(saved, bad)
    shutil.copy(bad / "subjects" / "subj01.safetensors", bad / "subjects" / "subj02.safetensors")
    with pytest.raises(CheckpointError, match="subj02"):
        load_toyworld(bad)
    (bad / "toyworld.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="toyworld.json"):
        load_toyworld(bad)


def test_plots(world):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plot_noise_ceiling(world)
    assert fig.axes
    plt.close(fig)
    fig = plot_subject_vertices(world, "subj01")
    assert len(fig.axes) == 2
    plt.close(fig)
