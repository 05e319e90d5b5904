"""NeuralDiffuser's voxel encoder, decoders and losses (§4.2, Eq. 1-2, 5-7): shapes, values, round trips,
refusals, and that the decoders learn a held-out linear map from voxels."""
import math

import pytest
import torch
import torch.nn.functional as F

from brainrecon.errors import InvalidInputError
from brainrecon.models import (LatentDecoder, MixerDecoder, VoxelEncoder, align_first_order, mixco_loss,
                               mixco_mix, soft_clip_loss)

pytestmark = pytest.mark.usefixtures("one_thread")   # module-level set_num_threads is undone by other files' fixtures


def test_voxel_encoder_maps_each_subjects_own_voxel_count_into_one_space(tmp_path):
    enc = VoxelEncoder({"subj01": 30, "subj02": 17}, hidden_dim=8)
    assert enc(torch.randn(4, 30), "subj01").shape == (4, 8) and enc(torch.randn(2, 17), "subj02").shape == (2, 8)
    with pytest.raises(InvalidInputError, match=r"subj02's voxels must be \(B, 17\)"):
        enc(torch.randn(2, 30), "subj02")
    with pytest.raises(InvalidInputError, match="unknown subject 'subj05'.*add_subject"):
        enc(torch.randn(2, 30), "subj05")
    enc.add_subject("subj08", 11)
    assert enc.subjects == ["subj01", "subj02", "subj08"]
    enc.save_pretrained(tmp_path / "enc")
    back = VoxelEncoder.from_pretrained(tmp_path / "enc")
    x = torch.randn(3, 11)
    assert torch.equal(back(x, "subj08"), enc(x, "subj08"))
    with pytest.raises(InvalidInputError, match="already known"):
        enc.add_subject("subj01", 30)
    with pytest.raises(InvalidInputError, match="positive voxel count"):
        VoxelEncoder({"subj01": 0})
    with pytest.raises(InvalidInputError, match="empty"):
        VoxelEncoder({})


def test_decoders_give_the_targets_shapes_and_round_trip(tmp_path):
    h = torch.randn(3, 32)
    fc = MixerDecoder(32, out_tokens=40, out_dim=96, n_tokens=4, token_dim=16, n_blocks=2,
                      projection_hidden=32).eval()
    out = fc(h)
    assert out.prediction.shape == (3, 40, 96) and out.projection.shape == (3, 40 * 96)   # the target's shape
    fz = LatentDecoder(32, latent_channels=16, latent_size=8, grid_size=2, grid_channels=16, n_blocks=2,
                       projection_channels=8).eval()
    oz = fz(h)
    assert oz.prediction.shape == (3, 16, 8, 8) and oz.projection.shape == (3, 8 * 2 * 2)
    assert LatentDecoder(32, 4, 16, grid_size=16, grid_channels=8)(h).prediction.shape == (3, 4, 16, 16)
    for m, name in ((fc, "fc"), (fz, "fz")):
        m.save_pretrained(tmp_path / name)
        back = type(m).from_pretrained(tmp_path / name).eval()
        assert torch.equal(back(h).prediction, m(h).prediction)
    with pytest.raises(InvalidInputError, match="power of two"):
        LatentDecoder(32, 4, 12, grid_size=8)


def test_soft_clip_loss_is_the_cross_entropy_against_the_targets_own_similarities():
    torch.manual_seed(0)
    p, c = torch.randn(6, 10), torch.randn(6, 10)
    tau = 0.5
    pn, cn = F.normalize(p, dim=-1), F.normalize(c, dim=-1)
    t = F.softmax(cn @ cn.T / tau, 1)
    lo = pn @ cn.T / tau
    want = (-(t * F.log_softmax(lo, 1)).sum(1).mean() - (t.T * F.log_softmax(lo.T, 1)).sum(1).mean()) / 2
    assert soft_clip_loss(p, c, tau).item() == pytest.approx(want.item(), rel=1e-6)
    # perfect predictions beat shuffled ones; scale does not matter (L2-normalised)
    assert soft_clip_loss(3 * c, c, 0.1) < soft_clip_loss(c[torch.randperm(6)], c, 0.1)
    with pytest.raises(InvalidInputError, match="same D"):
        soft_clip_loss(torch.randn(6, 10), torch.randn(6, 9))


def test_mixco_loss_with_lambda_one_is_the_symmetric_clip_loss():
    torch.manual_seed(1)
    p, c = torch.randn(5, 7), torch.randn(5, 7)
    lo = F.normalize(p, dim=-1) @ F.normalize(c, dim=-1).T / 0.2
    y = torch.arange(5)
    clip = (F.cross_entropy(lo, y) + F.cross_entropy(lo.T, y)) / 2
    perm = torch.randperm(5)
    assert mixco_loss(p, c, torch.ones(5), perm, 0.2).item() == pytest.approx(clip.item(), rel=1e-6)
    # lambda = 0: the target is the partner's embedding
    half = mixco_loss(p, c, torch.zeros(5), perm, 0.2)
    assert half.item() > 0 and math.isfinite(half.item())
    assert mixco_loss(c[perm], c, torch.zeros(5), perm, 0.05) < mixco_loss(c, c, torch.zeros(5), perm, 0.05)


def test_mixco_mix_mixes_each_row_with_its_partner():
    torch.manual_seed(2)
    v = torch.randn(8, 5)
    mixed, lam, perm = mixco_mix(v, beta=0.15)
    assert ((lam >= 0) & (lam <= 1)).all() and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam[:, None] * v + (1 - lam[:, None]) * v[perm])


def test_first_order_alignment_gives_the_training_statistics_and_keeps_the_order():
    torch.manual_seed(3)
    z = 0.3 * torch.randn(50, 4, 3, 3) + 2.0          # decoded latents: shrunk and shifted
    mu, sd = torch.tensor([0.0, 1.0, -1.0, 0.5]), torch.tensor([1.0, 2.0, 0.5, 1.5])
    a = align_first_order(z, mu, sd)
    assert torch.allclose(a.mean((0, 2, 3)), mu, atol=1e-5) and torch.allclose(a.std((0, 2, 3)), sd, atol=1e-4)
    flat, aflat = z[:, 1].flatten(), a[:, 1].flatten()
    assert torch.equal(flat.argsort(), aflat.argsort())     # an affine map per channel
    with pytest.raises(InvalidInputError, match="one value per latent channel"):
        align_first_order(z, mu[:3], sd)
    with pytest.raises(InvalidInputError, match="N ≥ 2"):
        align_first_order(z[:1], mu, sd)


def test_encoder_and_decoder_learn_a_held_out_linear_map_from_voxels():
    """A toy subject whose 'text condition' is a fixed linear function of its voxels: the decoded
    condition of held-out scans beats predicting the training mean by a clear margin."""
    torch.manual_seed(4)
    n_vox, n_train, n_test = 40, 256, 64
    w = torch.randn(n_vox, 6 * 8) / math.sqrt(n_vox)
    v = torch.randn(n_train + n_test, n_vox)
    y = (v @ w).view(-1, 6, 8)
    enc = VoxelEncoder({"subj01": n_vox}, hidden_dim=64)
    dec = MixerDecoder(64, out_tokens=6, out_dim=8, n_tokens=4, token_dim=16, n_blocks=2,
                       projection_hidden=32, dropout=0.0)
    opt = torch.optim.AdamW([*enc.parameters(), *dec.parameters()], lr=3e-3)
    for step in range(300):
        i = torch.randint(0, n_train, (64,))
        out = dec(enc(v[i], "subj01"))
        loss = F.mse_loss(out.prediction, y[i]) + 0.1 * soft_clip_loss(out.projection, y[i].flatten(1), 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():
        pred = dec(enc(v[n_train:], "subj01")).prediction
    mse = F.mse_loss(pred, y[n_train:]).item()
    baseline = F.mse_loss(y[:n_train].mean(0).expand_as(y[n_train:]), y[n_train:]).item()
    assert mse < 0.5 * baseline, (mse, baseline)


def test_the_diffusion_prior_learns_a_held_out_conditional_map_and_samples_deterministically(tmp_path):
    """Eq. 3's prior: denoising c_t given h, it learns c = tanh(h W) well enough that its sample from
    the reverse process beats predicting the mean on held-out conditions; a scan's sample does not
    depend on its batch; save / load keep it."""
    from brainrecon.models import DiffusionPrior

    torch.manual_seed(0)
    prior = DiffusionPrior(n_tokens=4, dim=16, depth=1, heads=2, num_inference_steps=10)
    w = torch.randn(16, 16) / 4
    h, h_test = torch.randn(512, 4, 16), torch.randn(64, 4, 16)
    c, c_test = torch.tanh(h @ w) * 1.5, torch.tanh(h_test @ w) * 1.5
    opt = torch.optim.AdamW(prior.parameters(), 3e-3)
    sched = prior.make_scheduler()
    for _ in range(300):
        b = torch.randint(0, len(h), (32,))
        loss = prior.loss(h[b], c[b], sched)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sample = prior.sample(h_test)
    mse, var = float(((sample - c_test) ** 2).mean()), float(c_test.var())
    assert mse < 0.3 * var, (mse, var)
    assert torch.allclose(prior.sample(h_test[:3]), sample[:3], atol=1e-5)      # batch-independent
    prior.save_pretrained(tmp_path / "prior")
    back = DiffusionPrior.from_pretrained(tmp_path / "prior")
    assert torch.allclose(back.sample(h_test[:3]), sample[:3], atol=1e-6)
    with pytest.raises(InvalidInputError, match="multiple of its heads"):
        DiffusionPrior(4, 10, heads=4)
