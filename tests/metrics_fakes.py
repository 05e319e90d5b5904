"""Fakes for the metric tests: a random toy backbone folder and random-weight files of the real networks.

The fake real weights are torchvision's own architectures with random initialisation, saved
with their genuine state-dict keys and shapes, so loading, preprocessing and feature taps
run exactly as with the published files.
"""
from __future__ import annotations

from pathlib import Path

import torch


def write_random_toy_backbone(root, image_size: int = 32, layers: int = 3, seed: int = 0) -> Path:
    """A toy backbone folder (SD layout + attribute_classifier/) with random weights."""
    from brainrecon.backbones import AttributeClassifier, make_toy_tokenizer
    from brainrecon.backbones.toy import (make_toy_image_encoder, make_toy_scheduler, make_toy_text_encoder,
                                          make_toy_unet, make_toy_vae)

    root = Path(root)
    torch.manual_seed(seed)
    tok = make_toy_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    make_toy_text_encoder(len(tok), 16, 1, 2).save_pretrained(root / "text_encoder")
    make_toy_image_encoder(image_size, 32, layers, 2, 8).save_pretrained(root / "image_encoder")
    make_toy_vae(image_size, (8, 8), 4).save_pretrained(root / "vae")
    make_toy_unet(image_size // 2, 4, (8, 16), 16).save_pretrained(root / "unet")
    make_toy_scheduler().save_pretrained(root / "scheduler")
    AttributeClassifier(image_size=image_size, channels=(8, 16)).save_pretrained(root / "attribute_classifier")
    return root


#: torchvision builder and kwargs of each weights file (names as in brainrecon.metrics.NETWORKS).
REAL_FILES = {
    "alexnet": ("alexnet", {}, "alexnet-owt-7be5be79.safetensors"),
    "inception": ("inception_v3", dict(aux_logits=True, transform_input=True, init_weights=False),
                  "inception_v3_google-0cc3c7bd.safetensors"),
    "effnet": ("efficientnet_b1", {}, "efficientnet_b1-c27df63c.safetensors"),
    "swav": ("resnet50", {}, "swav_800ep_pretrain.pth.tar"),
}


def _calibrate_batch_norm(net):
    """Set BatchNorm running statistics from one batch, so random networks keep unit-scale activations.

    (With torchvision's default running stats, a random EfficientNet's pooled features are ~1e-14.)
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return net
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                       # cumulative average: one batch gives its exact statistics
    net.train()
    with torch.no_grad():
        side = 299 if isinstance(net, __import__("torchvision").models.Inception3) else 160
        net(torch.rand(3, 3, side, side))
    for m in bns:
        m.momentum = 0.1
    return net.eval()


def write_fake_real_weights(folder, which=("alexnet", "inception", "effnet", "swav", "clip"), seed: int = 0) -> Path:
    """Random-init torchvision networks saved as the files brainrecon looks for, plus a tiny HF CLIP folder.

    SwAV is written as FAIR's checkpoint is: a ``torch.save`` dict with ``module.``-prefixed
    keys and extra projection-head tensors (read with ``weights_only=True``).
    """
    import torchvision.models as tvm
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for key in which:
        if key == "clip":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                patch_size=32, projection_dim=24)).save_pretrained(folder / "clip-vit-large-patch14")
            continue
        arch, kw, name = REAL_FILES[key]
        net = _calibrate_batch_norm(getattr(tvm, arch)(weights=None, **kw))
        sd = {k: v.contiguous() for k, v in net.state_dict().items()}
        if key == "swav":
            sd = {f"module.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
            sd["module.projection_head.0.weight"] = torch.randn(8, 2048)
            torch.save(sd, folder / name)
        else:
            save_file(sd, str(folder / name))
    return folder
