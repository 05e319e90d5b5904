"""NeuroPictor model components: calibrated encoder (MAE + guide token), HLGN, LLMN, composition."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.models.modeling_utils import ModelMixin

from brainrecon.errors import CheckpointError, InvalidInputError
from brainrecon.models import (CalibratedEncoder, HighLevelGuidingNetwork, LowLevelManipulationNetwork,
                               NeuroPictorModel, semantic_loss)

L_T, D_T = 7, 16  # text condition of the tiny backbone (deliberately not 77 x 1024)


def make_encoder(**kw):
    cfg = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32,
               decoder_depth=1, decoder_num_heads=4)
    cfg.update(kw)
    return CalibratedEncoder(**cfg)


def make_unet(cross_attention_dim=D_T):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=4, norm_num_groups=4).eval().requires_grad_(False)


def backbone_like(unet, text_length=L_T):
    return SimpleNamespace(unet=unet, text_length=text_length,
                           text_embed_dim=unet.config.cross_attention_dim)


def perturb_zero_convs(llmn, scale=0.1, seed=1):
    """Give the zero-initialised layers (ControlNet zero convs, feature-transform zero conv) weights."""
    g = torch.Generator().manual_seed(seed)
    mods = [*llmn.controlnet.controlnet_down_blocks, llmn.controlnet.controlnet_mid_block,
            llmn.feature_transform.zero_conv]
    with torch.no_grad():
        for m in mods:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = make_unet()
    enc = make_encoder()
    model = NeuroPictorModel.from_backbone(backbone_like(unet), enc, use_auxiliary=True,
                                           hlgn_hidden_tokens=8)
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 1, 32, 32, generator=g)
    z = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([3, 300, 900])
    return SimpleNamespace(unet=unet, model=model, maps=maps, z=z, t=t)


@pytest.fixture(scope="module")
def toy_maps():
    from brainrecon.data.pairs import make_toy_dataset
    from brainrecon.data.surface import FlatmapProjector
    from brainrecon.data.toyworld import ToyWorldConfig, make_toyworld

    world = make_toyworld(ToyWorldConfig.smoke(n_subjects=2, n_test=8, n_train=16), progress=False)
    proj = FlatmapProjector(32)
    ds = make_toy_dataset(world, projector=proj)
    maps = torch.stack([ds.brain(i) for i in range(len(ds))])
    return maps, torch.from_numpy(np.array(proj.pixel_mask))


# ---------------------------------------------------------------------- calibrated encoder
def test_encoder_shapes_and_patchify():
    enc = make_encoder()
    x = torch.randn(2, 1, 32, 32)
    assert enc.num_tokens == 17
    assert enc.encode(x).shape == (2, 17, 32)
    assert enc.encode(x, mask_ratio=0.75).shape == (2, 1 + 4, 32)
    loss, rec = enc(x)
    assert loss.ndim == 0 and rec.shape == x.shape
    assert torch.equal(enc.unpatchify(enc.patchify(x)), x)
    assert torch.equal(enc.patchify(x)[0, 1], x[0, 0, :8, 8:16].reshape(-1))  # row-major patches
    with pytest.raises(InvalidInputError, match=r"\(B, 1, 32, 32\)"):
        enc.encode(torch.randn(2, 1, 64, 64))
    rect = make_encoder(image_size=(16, 32))
    assert rect.encode(torch.randn(1, 1, 16, 32)).shape == (1, 1 + 8, 32)


def test_encoder_round_trip_and_drop_decoder(tmp_path):
    torch.manual_seed(0)
    enc = make_encoder(mask_ratio=0.5).eval()
    x = torch.randn(2, 1, 32, 32)
    enc.save_pretrained(tmp_path / "full")
    back = CalibratedEncoder.from_pretrained(tmp_path / "full").eval()
    assert_same_state(enc, back)
    assert torch.equal(back.encode(x), enc.encode(x)) and torch.equal(back(x)[1], enc(x)[1])
    assert back.config.mask_ratio == 0.5
    n_full = sum(p.numel() for p in enc.parameters())
    enc.drop_decoder()
    assert sum(p.numel() for p in enc.parameters()) < n_full
    enc.save_pretrained(tmp_path / "enc")
    only = CalibratedEncoder.from_pretrained(tmp_path / "enc")
    assert only.config.has_decoder is False
    assert torch.equal(only.encode(x), back.encode(x))
    with pytest.raises(InvalidInputError, match="decoder was dropped"):
        only(x)


def test_reconstruction_uses_the_guide_token_only():
    torch.manual_seed(0)
    enc = make_encoder().eval()
    x = torch.randn(2, 1, 32, 32)
    latent = enc.encode(x)
    scrambled = latent.clone()
    scrambled[:, 1:] = torch.randn_like(scrambled[:, 1:]) * 10
    assert torch.equal(enc.decode(scrambled), enc.decode(latent))
    assert torch.equal(enc.decode(latent[:, 0]), enc.decode(latent))
    # through forward(): overwrite every patch token of the encoder output with a hook
    ref = enc(x)[1]
    hook = enc.norm.register_forward_hook(
        lambda m, i, out: torch.cat([out[:, :1], torch.randn_like(out[:, 1:])], dim=1))
    try:
        assert torch.equal(enc(x)[1], ref)
    finally:
        hook.remove()
    hook = enc.norm.register_forward_hook(lambda m, i, out: out + 1.0)  # guide token changes too
    try:
        assert not torch.allclose(enc(x)[1], ref)
    finally:
        hook.remove()


def test_reconstruction_loss_respects_pixel_mask():
    torch.manual_seed(0)
    enc = make_encoder().eval()
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:20, 8:30] = True
    loss, rec = enc(x, pixel_mask=mask)
    err = (rec - x)[:, :, mask]
    assert torch.allclose(loss, (err ** 2).mean(), rtol=1e-6)
    y = x.clone()
    y[:, :, ~mask] = 100.0  # values outside the mask do not count...
    assert torch.allclose(CalibratedEncoder.reconstruction_loss(rec, y, mask), loss)
    assert not torch.allclose(CalibratedEncoder.reconstruction_loss(rec, y), loss)  # ...unless unmasked
    with pytest.raises(InvalidInputError, match="selects no pixel"):
        enc(x, pixel_mask=torch.zeros(32, 32))


def test_calibrated_encoding_learns_toy_flatmaps(toy_maps):
    maps, pixel_mask = toy_maps
    assert maps.shape[1:] == (1, 32, 32) and len(maps) == 32
    torch.manual_seed(0)
    enc = make_encoder(mask_ratio=0.25)
    opt = torch.optim.AdamW(enc.parameters(), lr=2e-3)

    def eval_loss():
        enc.eval()
        with torch.no_grad():
            out = enc(maps, pixel_mask=pixel_mask)[0].item()
        enc.train()
        return out

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        idx = torch.randperm(len(maps), generator=g)[:16]
        loss, _ = enc(maps[idx], pixel_mask=pixel_mask, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


# ---------------------------------------------------------------------- HLGN
def test_hlgn_shapes_auxiliary_zero_init_and_round_trip(tmp_path):
    torch.manual_seed(0)
    s = torch.randn(2, 17, 32)
    plain = HighLevelGuidingNetwork(17, 32, L_T, D_T, hidden_tokens=8)
    out = plain(s)
    assert out.semantic_condition.shape == (2, L_T, D_T)
    assert torch.equal(out.semantic_condition, out.text_features)
    aux = HighLevelGuidingNetwork(17, 32, L_T, D_T, hidden_tokens=8, use_auxiliary=True)
    sem, text = aux(s, return_dict=False)
    assert torch.equal(sem, text)  # Eq. 4: F_au is exactly zero at initialisation
    # pre-training -> refining hand-off: adding the branch changes nothing until it is trained
    plain.add_auxiliary()
    assert plain.config.use_auxiliary and torch.equal(plain(s).semantic_condition, out.semantic_condition)
    with torch.no_grad():
        plain.auxiliary_out.weight.normal_()
    sem2, text2 = plain(s, return_dict=False)
    assert torch.equal(text2, out.text_features) and not torch.allclose(sem2, text2)
    plain.save_pretrained(tmp_path / "hlgn")
    back = HighLevelGuidingNetwork.from_pretrained(tmp_path / "hlgn")
    assert_same_state(plain, back)
    assert torch.equal(back(s).semantic_condition, sem2)
    with pytest.raises(InvalidInputError, match=r"\(B, 17, 32\)"):
        plain(torch.randn(2, 16, 32))


def test_semantic_loss_is_lambda_mse_by_hand():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, L_T, D_T, generator=g), torch.randn(2, L_T, D_T, generator=g)
    by_hand = 0.1 * ((a - b) ** 2).sum() / a.numel()
    assert torch.allclose(semantic_loss(a, b, lam=0.1), by_hand)
    assert torch.allclose(HighLevelGuidingNetwork.semantic_loss(a, b, 0.1), by_hand)
    assert semantic_loss(a, a, lam=5.0).item() == 0.0
    with pytest.raises(InvalidInputError, match="differ in shape"):
        semantic_loss(a, b[:, :3])


# ---------------------------------------------------------------------- LLMN
def test_llmn_copies_the_unet_and_is_zero_at_init(tiny):
    llmn, unet, m = tiny.model.llmn, tiny.unet, tiny.model
    assert llmn.num_residuals == 5  # conv_in + 2 (block 1) + 1 (block 2) + mid; 13 for SD 2.1
    for name in ("conv_in", "down_blocks", "mid_block", "time_embedding"):
        assert_same_state(getattr(llmn.controlnet, name), getattr(unet, name))
    with torch.no_grad():
        s = m.encode(tiny.maps)
        sem = m.semantic_condition(fmri_tokens=s)
        assert llmn.feature_map(s).shape == (3, 8, 8, 8)  # (B, block_out_channels[0], h, w)
        down, mid = llmn(tiny.z, tiny.t, sem, s)
        assert [tuple(r.shape) for r in down] == [(3, 8, 8, 8), (3, 8, 8, 8), (3, 8, 4, 4), (3, 16, 4, 4)]
        assert mid.shape == (3, 16, 4, 4)
        assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
        plain = unet(tiny.z, tiny.t, encoder_hidden_states=sem).sample
        assert torch.allclose(m.predict_noise(unet, tiny.z, tiny.t, tiny.maps), plain, atol=1e-6)


def test_control_scale_is_linear(tiny, tmp_path):
    llmn = LowLevelManipulationNetwork.from_unet(tiny.unet, 17, 32)
    perturb_zero_convs(llmn)
    m = NeuroPictorModel(tiny.model.encoder, tiny.model.hlgn, llmn)
    with torch.no_grad():
        d1, m1 = m.control_residuals(tiny.z, tiny.t, tiny.maps, control_scale=1.0)
        d2, m2 = m.control_residuals(tiny.z, tiny.t, tiny.maps, control_scale=2.0)
        d0, m0 = m.control_residuals(tiny.z, tiny.t, tiny.maps, control_scale=0.0)
        assert torch.count_nonzero(m1) > 0
        for a, b, c in zip([*d1, m1], [*d2, m2], [*d0, m0]):
            assert torch.allclose(b, 2 * a, atol=1e-6) and torch.count_nonzero(c) == 0
        sem = m.semantic_condition(tiny.maps)
        plain = tiny.unet(tiny.z, tiny.t, encoder_hidden_states=sem).sample
        assert torch.allclose(m.predict_noise(tiny.unet, tiny.z, tiny.t, tiny.maps, control_scale=0.0), plain)
        assert not torch.allclose(m.predict_noise(tiny.unet, tiny.z, tiny.t, tiny.maps), plain, atol=1e-4)
        # the residuals depend on the fMRI through the feature transformation
        other = m.control_residuals(tiny.z, tiny.t, tiny.maps.flip(0), semantic_condition=sem)[1]
        own = m.control_residuals(tiny.z, tiny.t, tiny.maps, semantic_condition=sem)[1]
        assert not torch.allclose(other, own)
    llmn.save_pretrained(tmp_path / "llmn")
    back = LowLevelManipulationNetwork.from_pretrained(tmp_path / "llmn")
    assert_same_state(llmn, back)
    s = m.encode(tiny.maps).detach()
    with torch.no_grad():
        a, b = llmn(tiny.z, tiny.t, sem, s), back(tiny.z, tiny.t, sem, s)
    assert all(torch.equal(x, y) for x, y in zip([*a[0], a[1]], [*b[0], b[1]]))


def test_gradients_reach_the_encoder_through_hlgn_and_llmn(tiny):
    enc = make_encoder()
    enc.load_state_dict(tiny.model.encoder.state_dict())
    hlgn = HighLevelGuidingNetwork(17, 32, L_T, D_T, hidden_tokens=8)
    llmn = LowLevelManipulationNetwork.from_unet(tiny.unet, 17, 32)
    m = NeuroPictorModel(enc, hlgn, llmn)
    # at initialisation the zero convs themselves receive gradient (ControlNet's property)
    out = m(tiny.unet, tiny.z, tiny.t, tiny.maps)
    (out.noise_pred ** 2).mean().backward()
    assert llmn.controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
    m.zero_grad()
    # through the HLGN: semantic loss only
    target = torch.randn(3, L_T, D_T)
    out = m(tiny.unet, tiny.z, tiny.t, tiny.maps)
    semantic_loss(out.text_features, target, lam=0.1).backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0 and hlgn.text_encoder.proj.weight.grad.abs().sum() > 0
    m.zero_grad()
    # through the LLMN only: a fixed (detached) semantic condition, trained zero convs
    perturb_zero_convs(llmn)
    out = m(tiny.unet, tiny.z, tiny.t, tiny.maps, semantic_condition=torch.randn(3, L_T, D_T))
    assert out.text_features is None
    torch.nn.functional.mse_loss(out.noise_pred, torch.randn_like(out.noise_pred)).backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in hlgn.parameters())
    assert llmn.feature_transform.token_conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.unet.parameters())


# ---------------------------------------------------------------------- composition
def test_semantic_swap_and_round_trip(tiny, tmp_path):
    m = tiny.model
    perturb_zero_convs(m.llmn, seed=2)
    a, b = tiny.maps, tiny.maps.flip(0)
    with torch.no_grad():
        sem_b = m.semantic_condition(b)
        swapped = m.predict_noise(tiny.unet, tiny.z, tiny.t, a, semantic_condition=sem_b)
        down, mid = m.llmn(tiny.z, tiny.t, sem_b, m.encode(a))  # low level of a, high level of b
        by_hand = tiny.unet(tiny.z, tiny.t, encoder_hidden_states=sem_b,
                            down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        assert torch.allclose(swapped, by_hand, atol=1e-6)
        assert not torch.allclose(swapped, m.predict_noise(tiny.unet, tiny.z, tiny.t, a), atol=1e-4)
        ref = m.predict_noise(tiny.unet, tiny.z, tiny.t, a, control_scale=0.7)
    m.save_pretrained(tmp_path / "np")
    back = NeuroPictorModel.from_pretrained(tmp_path / "np")
    assert_same_state(m, back)
    with torch.no_grad():
        assert torch.equal(back.predict_noise(tiny.unet, tiny.z, tiny.t, a, control_scale=0.7), ref)
    with pytest.raises(CheckpointError, match="llmn"):
        NeuroPictorModel.from_pretrained(tmp_path / "np" / "encoder")
    # a diffusers ModelMixin (as MultiControlNetModel): its parts' parameters, device and dtype
    assert isinstance(back, ModelMixin) and back.dtype == torch.float32 and back.device.type == "cpu"
    assert back.num_parameters() == sum(getattr(back, n).num_parameters() for n in ("encoder", "hlgn", "llmn"))


def test_text_condition_sizes_come_from_the_backbone():
    torch.manual_seed(0)
    unet = make_unet(cross_attention_dim=24)
    m = NeuroPictorModel.from_backbone(backbone_like(unet, text_length=7), make_encoder(),
                                       hlgn_hidden_tokens=8)
    maps, z = torch.randn(2, 1, 32, 32), torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert m.semantic_condition(maps).shape == (2, 7, 24)
        assert m.predict_noise(unet, z, 10, maps).shape == (2, 4, 8, 8)
    assert m.llmn.controlnet.config.cross_attention_dim == 24
    wrong = SimpleNamespace(unet=unet, text_length=7, text_embed_dim=32)
    with pytest.raises(InvalidInputError, match="cross_attention_dim"):
        NeuroPictorModel.from_backbone(wrong, make_encoder())
    other_enc = make_encoder(patch_size=16)
    with pytest.raises(InvalidInputError, match="rebuild hlgn"):
        NeuroPictorModel(other_enc, m.hlgn, m.llmn)


def test_sd21_sized_configuration_on_the_meta_device():
    """SD 2.1 + a ViT-L flatmap encoder, built without memory: 13 residuals, 77 x 1024 semantics."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
        enc = CalibratedEncoder(image_size=256, patch_size=16, embed_dim=1024, depth=24, num_heads=16)
        enc.drop_decoder()
        m = NeuroPictorModel.from_backbone(backbone_like(unet, text_length=77), enc, use_auxiliary=True,
                                           load_weights_from_unet=False)
        s = torch.empty(2, 257, 1024)
        assert m.semantic_condition(fmri_tokens=s).shape == (2, 77, 1024)
        assert m.llmn.feature_map(s).shape == (2, 320, 64, 64)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert enc.num_tokens == 257 and m.llmn.num_residuals == 13
    assert count(unet) == 865_910_724  # SD 2.1's U-Net
    assert count(m.llmn.controlnet) == 363_141_760
    assert count(m.llmn.feature_transform) == 4_803_332
    assert count(m.encoder) == 302_575_616
