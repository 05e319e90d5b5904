"""Contrast, Attend and Diffuse's phase 2 (brainrecon.models.cross_modal)."""
import pytest
import torch

from brainrecon.errors import InvalidInputError
from brainrecon.models.cross_modal import CrossModalMAE
from brainrecon.models.dcmae import DoubleContrastiveMAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _parts(seed=0):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    fmri = DoubleContrastiveMAE(num_voxels=48, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0,
                                sparsify=0.0)
    image = ViTMAEForPreTraining(ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64, decoder_hidden_size=16,
                                              decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                              decoder_intermediate_size=32))
    return fmri, image


def test_phase_two_starts_from_phase_one_and_tunes_all_but_the_image_decoder():
    fmri, image = _parts()
    m = CrossModalMAE.build(fmri, image)
    v, u = torch.randn(4, 48), torch.rand(4, 3, 16, 16)
    loss, logs = m.loss(v, u, torch.Generator().manual_seed(0))
    # the cross-attention outputs start at zero: the fMRI term equals phase 1's own masked MSE
    g = torch.Generator().manual_seed(0)
    t, r, mask = fmri.encode(v, 0.75, g)
    assert logs["fmri_mse"].item() == pytest.approx(fmri.masked_mse(fmri.decode(t, r), v, mask).item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.25 * logs["fmri_mse"].item() + 1.5 * logs["image_mse"].item(), rel=1e-5)
    loss.backward()
    assert m.cross_fmri.attn.out_proj.weight.grad.abs().sum() > 0
    assert m.cross_image.attn.out_proj.weight.grad.abs().sum() > 0
    assert fmri.blocks[0].qkv.weight.grad.abs().sum() > 0
    enc = [p for n, p in image.vit.named_parameters() if "embeddings" not in n and p.ndim == 2]
    assert enc and all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc)   # the image encoder is tuned
    assert all(p.grad is None for p in image.decoder.parameters())          # frozen (§4.2.1)


def test_phase_two_refuses_bad_input():
    fmri, image = _parts()
    m = CrossModalMAE.build(fmri, image)
    with pytest.raises(InvalidInputError, match="4 responses but 3 images"):
        m.loss(torch.randn(4, 48), torch.rand(3, 3, 16, 16))
    with pytest.raises(InvalidInputError, match=r"\(B, 3, 16, 16\)"):
        m.loss(torch.randn(4, 48), torch.rand(4, 3, 32, 32))
    with pytest.raises(InvalidInputError, match="48-voxel"):
        m.loss(torch.randn(4, 50), torch.rand(4, 3, 16, 16))
    with pytest.raises(InvalidInputError, match="ViTMAEForPreTraining"):
        CrossModalMAE.build(fmri, torch.nn.Linear(2, 2))
    with pytest.raises(InvalidInputError, match="DoubleContrastiveMAE"):
        CrossModalMAE.build(torch.nn.Linear(2, 2), image)
    with pytest.raises(InvalidInputError, match="not both 0"):
        CrossModalMAE(fmri_weight=0.0, image_weight=0.0)

