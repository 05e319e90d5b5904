"""Contrast, Attend and Diffuse's phase-1 DC-MAE (brainrecon.models.dcmae)."""
import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.models.dcmae import DoubleContrastiveMAE, info_nce

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1,
             decoder_num_heads=2, mlp_ratio=2.0)


def test_patches_round_trip_for_voxels_and_flatmaps():
    m = DoubleContrastiveMAE(num_voxels=61, **SMALL)               # 61 = 7 patches of 8, padded by 3
    x = torch.randn(3, 61)
    assert m.num_patches == 8 and m.patchify(x).shape == (3, 8, 8)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)
    f = DoubleContrastiveMAE(input_kind="flatmap", image_size=16, **SMALL)
    maps = torch.randn(2, 1, 16, 16)
    assert f.patchify(maps).shape == (2, 4, 64) and torch.equal(f.unpatchify(f.patchify(maps)), maps)
    tok = m.encode_tokens(x)
    assert tok.shape == (3, 1 + 8, 32) and m.num_tokens == 9


def test_info_nce_prefers_the_positive_and_excludes_self_negatives():
    a = torch.eye(4)
    assert info_nce(a, a, a, 0.05) < 1e-6                         # only j != i count as negatives
    swapped = a[[1, 0, 3, 2]]
    # positive as far as every negative: log(1 + 3 negatives)
    assert info_nce(a, swapped, a, 0.05).item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-5)
    assert info_nce(a, swapped, swapped, 0.05) > 15                # a negative equals the query


def test_plain_and_double_contrastive_losses_and_bad_input():
    torch.manual_seed(0)
    x = torch.randn(6, 40)
    plain = DoubleContrastiveMAE(num_voxels=40, cross_weight=0.0, self_weight=0.0, **SMALL)
    loss, logs = plain.loss(x, torch.Generator().manual_seed(0))
    assert set(logs) == {"mse"} and loss.item() == pytest.approx(logs["mse"].item())
    dc = DoubleContrastiveMAE(num_voxels=40, **SMALL)
    loss, logs = dc.loss(x, torch.Generator().manual_seed(0))
    assert set(logs) == {"mse", "self_contrast", "cross_contrast"}
    loss.backward()
    assert dc.blocks[0].qkv.weight.grad.abs().sum() > 0 and dc.decoder_pred.weight.grad.abs().sum() > 0
    with pytest.raises(InvalidInputError, match="40-voxel response vectors of shape"):
        dc.loss(torch.randn(4, 41))
    with pytest.raises(InvalidInputError, match="at least 2 responses"):
        dc.loss(torch.randn(1, 40))
    bad = x.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN|finite"):
        dc.loss(bad)
    with pytest.raises(InvalidInputError, match="input_kind"):
        DoubleContrastiveMAE(input_kind="volume")


def test_dcmae_learns_to_fill_in_masked_voxels():
    """Responses on a 4-d subspace: after 300 steps of the masked-patch objective the masked voxels of
    held-out responses are predicted far better than by 0 (the responses' mean) (measured: 0.30 of it)."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 64, generator=g) / 2
    make = lambda n: torch.randn(n, 4, generator=g) @ basis                   # noqa: E731
    train, test = make(512), make(64)
    torch.manual_seed(0)
    m = DoubleContrastiveMAE(num_voxels=64, mask_ratio=0.5, sparsify=0.0, cross_weight=0.0, self_weight=0.0, **SMALL)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for step in range(300):
        i = torch.randint(0, len(train), (64,), generator=gen)
        loss, _ = m.loss(train[i], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        t, r, mask = m.encode(test, 0.5, torch.Generator().manual_seed(2))
        err = m.masked_mse(m.decode(t, r), test, mask).item()
    zero = m.masked_mse(torch.zeros_like(m.patchify(test)), test, mask).item()
    assert err < 0.4 * zero


def test_frl_recipe_runs_phases_one_and_two_resumably_and_refuses_bad_parts(tmp_path):
    """``train_cad_frl`` at smoke size: image MAE, phase 1, phase 2 in one folder; a rerun resumes every
    phase instead of training again; a wrong image-MAE folder names the files it looked for."""
    import json

    from brainrecon.training.cad import CADConfig, train_cad_frl

    cfg = CADConfig.smoke(output_dir=str(tmp_path / "cad"))
    out = train_cad_frl(cfg)
    m = json.loads((out / "metrics.json").read_text())
    assert {"phase1", "phase2"} <= set(m) and m["n_voxels"] > 0
    assert all(m["losses"][p]["steps"] > 0 for p in ("image_mae", "phase1", "phase2"))
    enc = DoubleContrastiveMAE.from_pretrained(out / "fmri_mae", use_safetensors=True)
    assert enc.config.num_voxels == m["n_voxels"] and (out / "image_mae" / "config.json").is_file()
    again = json.loads((train_cad_frl(cfg) / "metrics.json").read_text())
    assert again["losses"]["phase1"]["resumed_from"] == cfg.steps
    assert again["phase2"] == pytest.approx(m["phase2"])
    with pytest.raises(InvalidInputError, match=r"config\.json.*safetensors"):
        train_cad_frl(CADConfig.smoke(output_dir=str(tmp_path / "bad"), image_mae=str(tmp_path / "nowhere")))
    with pytest.raises(InvalidInputError, match="image_mae=.*vit-mae-base"):      # before any data is read
        train_cad_frl(CADConfig.smoke(output_dir=str(tmp_path / "nsd"), world=str(tmp_path / "an_nsd_root")))
    with pytest.raises(InvalidInputError, match="subj99"):
        train_cad_frl(CADConfig.smoke(output_dir=str(tmp_path / "bad2"), subject="subj99"))
