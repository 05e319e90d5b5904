"""Small random NeuroPictor reconstructors around the shipped toy backbone (for tests, notebook and demo runs)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from brainrecon.models import (CalibratedEncoder, DiffusionPrior, LatentDecoder, MixerDecoder, NeuralDiffuserModel,
                               NeuroPictorModel, VoxelEncoder)


def make_model(backbone, seed: int = 0, trained: bool = True, image_size: int = 32) -> NeuroPictorModel:
    """A random NeuroPictor model; ``trained`` gives its zero-initialised layers random weights."""
    torch.manual_seed(seed)
    enc = CalibratedEncoder(image_size=image_size, patch_size=8, embed_dim=32, depth=1, num_heads=4,
                            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4).drop_decoder()
    m = NeuroPictorModel.from_backbone(backbone, enc, use_auxiliary=True, hlgn_hidden_tokens=8)
    if trained:
        g = torch.Generator().manual_seed(seed + 1)
        llmn = m.llmn
        mods = [*llmn.controlnet.controlnet_down_blocks, llmn.controlnet.controlnet_mid_block,
                llmn.feature_transform.zero_conv, m.hlgn.auxiliary_out]
        with torch.no_grad():
            for mod in mods:
                for p in mod.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def write_tiny_reconstructor(path, seed: int = 0) -> Path:
    """A random reconstructor in the refine_subject layout: ``model/`` + ``backbone.json`` (toy)."""
    from brainrecon.backbones import load_backbone

    path = Path(path)
    make_model(load_backbone("toy"), seed=seed).save_pretrained(path / "model")
    (path / "backbone.json").write_text(json.dumps({"backbone": "toy"}))
    return path


def make_neuraldiffuser(bb, stats=True, layers=(1, 3), n_vox=50, prior=False):
    """An untrained NeuralDiffuserModel of toy sizes for subj01 (``n_vox`` voxels), attached to ``bb``
    (``prior``: with Eq. 3's diffusion prior after ``f_c``)."""
    torch.manual_seed(0)
    c, s = bb.unet.config.in_channels, bb.unet.config.sample_size
    width = bb.image_encoder.config.hidden_size
    n_tok = (bb.image_size // bb.image_encoder.config.patch_size) ** 2 + 1
    enc = VoxelEncoder({"subj01": n_vox, "subj02": 30}, hidden_dim=32)
    fc = MixerDecoder(32, bb.text_length, bb.text_embed_dim, n_tokens=4, token_dim=16, n_blocks=2, projection_hidden=16)
    fz = LatentDecoder(32, c, s, grid_size=s // 2, grid_channels=16, n_blocks=2, projection_channels=8)
    fg = {l: MixerDecoder(32, n_tok, width, n_tokens=4, token_dim=16, n_blocks=1, projection_hidden=16) for l in layers}
    mean, std = (torch.linspace(-0.5, 0.5, c), torch.linspace(0.5, 1.5, c)) if stats else (None, None)
    text_prior = DiffusionPrior(bb.text_length, bb.text_embed_dim, depth=1, num_inference_steps=4) if prior else None
    m = NeuralDiffuserModel(enc, fc, fz, fg, "subj01", mean, std, text_prior).eval().requires_grad_(False)
    return m.attach_backbone(bb)
