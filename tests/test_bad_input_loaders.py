"""Issue 17, groups 3, 5, 6 and 7 (checkpoints): loaders name the bad file and the fix.

* group 3: a truncated NSD file (HDF5, NIfTI, .mat, .mgh, CSV, captions JSON), a truncated
  backbone.json / pipeline.json / scheduler_config.json / safetensors file, a missing
  tokenizer.json, a device the machine lacks and a root that is not a path each raise
  brainrecon's own error, naming the file (or value) and what to do;
* group 5: a mask that selects nothing and an integer dtype are refused;
* group 6: only safetensors load; a pickle is never opened (the data cards say so);
* group 7: a training run whose newest checkpoint is truncated resumes from the one before.
"""
import os
import pickle
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brainrecon.backbones import TOY_WEIGHTS_DIR, load_backbone
from brainrecon.data.nsd import load_nsd, load_nsd_images, nsd_paths
from brainrecon.data.nsd_fixture import make_nsd_fixture
from brainrecon.errors import CheckpointError, DataNotFoundError, InvalidInputError
from brainrecon.sampling import TOY_RECONSTRUCTOR_DIR, load_reconstructor

pytestmark = pytest.mark.usefixtures("one_thread")

#: a CUDA index this machine does not have, whatever it has
MISSING_GPU = f"cuda:{torch.cuda.device_count()}"


def _copy(src, dst) -> Path:
    """A copy of a tree made of hard links (cheap); files to damage are replaced, never edited in place."""
    shutil.copytree(src, dst, copy_function=os.link)
    return Path(dst)


def _replace(path, data: bytes) -> Path:
    path = Path(path)
    if path.exists():
        path.unlink()                                    # break the hard link first: the original stays intact
    path.write_bytes(data)
    return path


def _truncate(path) -> Path:
    data = Path(path).read_bytes()
    return _replace(path, data[: len(data) // 2])


class _Bomb:
    """Unpickling this object writes a marker file: proof that a pickle was opened."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# ----------------------------------------------------------------------------- NSD (groups 3, 5, 6)
@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    return make_nsd_fixture(tmp_path_factory.mktemp("nsd") / "nsd", subjects=(1,), n_sessions=1,
                            spaces=("func1pt8mm", "fsaverage"), fsaverage_dtype="int16")


_NSD_FILES = {
    "betas .hdf5": (lambda p: p.betas(1, "func1pt8mm", 1, fmt="hdf5"),
                    lambda r: load_nsd(r, 1, sessions=[1], volume_format="hdf5", captions=False)),
    "betas .nii.gz": (lambda p: p.betas(1, "func1pt8mm", 1),
                      lambda r: load_nsd(r, 1, sessions=[1], volume_format="nii.gz", captions=False)),
    "ROI .nii.gz": (lambda p: p.roi(1, "func1pt8mm"), lambda r: load_nsd(r, 1, sessions=[1], captions=False)),
    "expdesign .mat": (lambda p: p.expdesign, lambda r: load_nsd(r, 1, sessions=[1], captions=False)),
    "betas .mgh": (lambda p: p.betas(1, "fsaverage", 1, hemi="rh"),
                   lambda r: load_nsd(r, 1, "fsaverage", sessions=[1], captions=False)),
    "stim info .csv": (lambda p: p.stim_info, lambda r: load_nsd(r, 1, sessions=[1], captions=True)),
    "captions .json": (lambda p: p.captions("train2017"), lambda r: load_nsd(r, 1, sessions=[1], captions=True)),
    "stimuli .hdf5": (lambda p: p.stimuli, lambda r: load_nsd_images(r, [0, 5, 70000])),
}


@pytest.mark.parametrize("which", list(_NSD_FILES))
def test_truncated_nsd_files_are_named_with_the_fix(nsd, tmp_path, which):
    where, call = _NSD_FILES[which]
    root = _copy(nsd, tmp_path / "nsd")
    bad = _truncate(where(nsd_paths(root)))
    with pytest.raises(CheckpointError) as e:
        call(root)
    msg = str(e.value)
    assert str(bad) in msg                                        # the file
    assert "truncated" in msg                                     # the problem
    assert "download it again" in msg or "COCO's file" in msg     # the fix


def test_intact_fixture_loads(nsd):
    """The damaged copies above fail because of the damage: the same calls pass on the intact tree."""
    for _, call in _NSD_FILES.values():
        call(nsd)


@pytest.mark.parametrize("root", [5, 1.5, b"/data/nsd", ["/data/nsd"]])
def test_root_that_is_not_a_path(root):
    with pytest.raises(InvalidInputError, match=r"'root' must be the NSD folder as a path") as e:
        load_nsd(root=root)
    assert "$BRAINRECON_NSD" in str(e.value) and type(root).__name__ in str(e.value)


def test_a_mask_that_selects_nothing_is_refused(nsd):
    with pytest.raises(InvalidInputError, match="selects no voxels") as e:
        load_nsd(nsd, 1, sessions=[1], captions=False, mask=np.zeros((8, 9, 7), bool))
    assert "at least one voxel > 0" in str(e.value)
    for h in ("lh", "rh"):                                        # an fsaverage ROI label of zeros
        nib.save(nib.MGHImage(np.zeros((163842, 1, 1), np.float32), np.eye(4)),
                 nsd_paths(nsd).roi(1, "fsaverage", "empty", hemi=h))
    with pytest.raises(InvalidInputError, match="selects no vertices") as e:
        load_nsd(nsd, 1, "fsaverage", sessions=[1], captions=False, roi="empty")
    assert "roi=None" in str(e.value)
    one = np.zeros((8, 9, 7), bool)
    one[3, 4, 2] = True
    assert load_nsd(nsd, 1, sessions=[1], captions=False, mask=one).n_features == 1


@pytest.mark.parametrize("dtype", [np.int8, np.int16, "int32", bool, "not-a-dtype"])
def test_integer_dtypes_are_refused(nsd, dtype):
    with pytest.raises(InvalidInputError, match="'dtype' must be a floating type") as e:
        load_nsd(nsd, 1, sessions=[1], captions=False, dtype=dtype)
    assert "truncate" in str(e.value)


def test_float_dtypes_still_load(nsd):
    d = load_nsd(nsd, 1, sessions=[1], captions=False, dtype=np.float64)
    assert d.betas.dtype == np.float64 and len(np.unique(d.betas)) > 100


def test_nsd_reader_never_unpickles_the_stim_info_pickle(nsd, tmp_path):
    """data_cards/nsd.md: the pickled nsd_stim_info_merged.pkl is never read."""
    root = _copy(nsd, tmp_path / "nsd")
    marker = tmp_path / "unpickled"
    pkl = nsd_paths(root).stim_info.with_suffix(".pkl")
    pkl.write_bytes(pickle.dumps(_Bomb(marker)))
    pickle.loads(pkl.read_bytes())                                # the bomb works...
    assert marker.exists()
    marker.unlink()
    load_nsd(root, 1, sessions=[1], captions=True)                # ...and the reader never sets it off
    assert not marker.exists()


# ----------------------------------------------------------------------------- backbones (groups 3, 6)
@pytest.fixture
def toy_copy(tmp_path):
    return _copy(TOY_WEIGHTS_DIR, tmp_path / "toy")


@pytest.mark.parametrize("rel, fix", [("backbone.json", "Write it again"),
                                      ("scheduler/scheduler_config.json", "scheduler.save_pretrained"),
                                      ("text_encoder/config.json", "save_pretrained"),
                                      ("unet/diffusion_pytorch_model.safetensors", "Copy that part again"),
                                      ("vae/diffusion_pytorch_model.safetensors", "Copy that part again")])
def test_truncated_backbone_files_are_named(toy_copy, rel, fix):
    bad = _truncate(toy_copy / rel)
    with pytest.raises(CheckpointError) as e:
        load_backbone(toy_copy)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and fix in msg


def test_missing_tokenizer_json_is_named_not_sentencepiece(toy_copy):
    (toy_copy / "tokenizer" / "tokenizer.json").unlink()          # tokenizer_config.json stays
    with pytest.raises(DataNotFoundError) as e:
        load_backbone(toy_copy)
    msg = str(e.value)
    assert str(toy_copy / "tokenizer" / "tokenizer.json") in msg and "(missing)" in msg
    assert "vocab.json + merges.txt" in msg and "sentencepiece" not in msg


def test_a_device_the_machine_lacks_is_refused_before_loading(tmp_path):
    for device in (MISSING_GPU, "cuda:7" if torch.cuda.device_count() < 8 else MISSING_GPU):
        with pytest.raises(InvalidInputError, match="not available|does not exist") as e:
            load_backbone("toy", device=device)
        assert repr(device) in str(e.value) and "'cpu'" in str(e.value)
    with pytest.raises(InvalidInputError, match="'device' must be a torch device"):
        load_backbone("toy", device="gpu0")
    with pytest.raises(InvalidInputError, match=MISSING_GPU):
        load_reconstructor(device=MISSING_GPU)
    from brainrecon.metrics import evaluate

    x = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(InvalidInputError, match=MISSING_GPU):
        evaluate(x, x, metrics=["pixcorr"], device=MISSING_GPU)


def test_a_torch_save_unet_is_refused_not_unpickled(toy_copy):
    """A legitimate pickled U-Net used to load silently (diffusers falls back to .bin)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(TOY_WEIGHTS_DIR / "unet")
    shutil.rmtree(toy_copy / "unet")
    unet.save_pretrained(toy_copy / "unet", safe_serialization=False)
    assert (toy_copy / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError) as e:
        load_backbone(toy_copy)
    msg = str(e.value)
    assert str(toy_copy / "unet") in msg and "diffusion_pytorch_model.bin" in msg
    assert "never unpickles" in msg and "safe_serialization=True" in msg


def test_loaders_never_open_a_pickle_next_to_the_safetensors(toy_copy, tmp_path):
    marker = tmp_path / "unpickled"
    for part in ("unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"):
        torch.save(_Bomb(marker), toy_copy / part)
    rec = _copy(TOY_RECONSTRUCTOR_DIR, tmp_path / "rec")
    torch.save(_Bomb(marker), rec / "conditioner" / "llmn" / "diffusion_pytorch_model.bin")
    _replace(rec / "backbone.json", b'{"backbone": "%s"}' % str(toy_copy).encode())
    load_backbone(toy_copy)
    load_reconstructor(rec)
    assert not marker.exists()


# ----------------------------------------------------------------------------- reconstructors (group 3, 6)
@pytest.fixture
def rec_copy(tmp_path):
    return _copy(TOY_RECONSTRUCTOR_DIR, tmp_path / "rec")


@pytest.mark.parametrize("rel", ["backbone.json", "conditioner/llmn/diffusion_pytorch_model.safetensors",
                                 "conditioner/encoder/diffusion_pytorch_model.safetensors"])
def test_truncated_reconstructor_files_are_named(rec_copy, rel):
    bad = _truncate(rec_copy / rel)
    with pytest.raises(CheckpointError) as e:
        load_reconstructor(rec_copy)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and "save_pretrained" in msg


def test_truncated_pipeline_json_is_named(rec_copy):
    _replace(rec_copy / "pipeline.json", b'{"guidance_scale": 5, "num_infer')
    with pytest.raises(CheckpointError, match="pipeline.json could not be read"):
        load_reconstructor(rec_copy)


def test_a_pickled_only_reconstructor_part_is_refused(rec_copy):
    from safetensors.torch import load_file

    part = rec_copy / "conditioner" / "hlgn"
    sd = load_file(str(part / "diffusion_pytorch_model.safetensors"))
    (part / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, part / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never unpickles") as e:
        load_reconstructor(rec_copy)
    assert str(part) in str(e.value)


# ----------------------------------------------------------------------------- checkpoints (group 7)
def _fit_problem():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g)

    def loss_fn(model, batch, step):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def model():
        torch.manual_seed(1)
        return torch.nn.Linear(4, 1)

    return model, loss_fn, (lambda step: (x, y))


def test_a_truncated_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    from brainrecon.training import FitConfig, fit

    model, loss_fn, batches = _fit_problem()
    cfg = dict(lr=1e-2, checkpoint_every=5, cpu=True, progress=False)
    fit(model(), loss_fn, batches, FitConfig(max_steps=15, **cfg), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-15"]  # keep two
    bad = _truncate(tmp_path / "checkpoint-15" / "model.safetensors")
    with pytest.warns(UserWarning, match="trying the checkpoint before it") as rec:
        res = fit(model(), loss_fn, batches, FitConfig(max_steps=20, **cfg), tmp_path)
    assert str(bad) in str(rec[0].message)
    assert res.resumed_from == 10 and res.step == 20


def test_no_readable_checkpoint_names_the_folders_to_delete(tmp_path):
    from brainrecon.training import FitConfig, fit

    model, loss_fn, batches = _fit_problem()
    cfg = dict(lr=1e-2, checkpoint_every=5, cpu=True, progress=False)
    fit(model(), loss_fn, batches, FitConfig(max_steps=10, **cfg), tmp_path)
    _truncate(tmp_path / "checkpoint-10" / "model.safetensors")
    _truncate(tmp_path / "checkpoint-5" / "trainer_state.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no checkpoint in") as e:
            fit(model(), loss_fn, batches, FitConfig(max_steps=20, **cfg), tmp_path)
    msg = str(e.value)
    assert f"Delete {tmp_path / 'checkpoint-10'}, {tmp_path / 'checkpoint-5'}" in msg and "step 0" in msg
    assert "trainer_state.json could not be read" in msg
