"""Feature extractors of the standard metrics, from local weights only (never downloaded).

Two feature sets answer the same names, so every metric has one code path:

``"real"`` (:class:`RealFeatureSet`)
    torchvision / transformers architectures with the published weights read from files
    the user names (``weights={"alexnet": path}``) or finds in ``weights_dir`` (file names
    in :data:`NETWORKS`, see ``data_cards/metrics.md``).
``"toy"`` (:class:`ToyFeatureSet`)
    The toy CLIP image tower (``load_backbone("toy").image_encoder``) stands in for every
    network; with ``L`` transformer blocks (hidden states ``0..L``):

    =============  ==================  =========================================================
    metric         real network         toy stand-in
    =============  ==================  =========================================================
    AlexNet(2)     ``features.4``       hidden state ``round(L/3)`` (≥1), all tokens flattened
    AlexNet(5)     ``features.11``      hidden state ``round(2L/3)`` (≥1), all tokens flattened
    Inception-v3   ``avgpool``          hidden state ``L``, mean of the patch tokens
    CLIP           ``image_embeds``     toy CLIP ``image_embeds`` (projected)
    EffNet-B       ``avgpool``          hidden state ``L``, class token
    SwAV           ``avgpool``          hidden state ``round(2L/3)``, mean of the patch tokens
    =============  ==================  =========================================================

Weights formats: ``.safetensors`` (preferred), or ``.pth``/``.pt``/``.pth.tar`` read with
``torch.load(weights_only=True)`` (tensors only — pickled code is never executed). CLIP is a
Hugging Face folder (``CLIPVisionModelWithProjection``, e.g. ``openai/clip-vit-large-patch14``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

from ..errors import CheckpointError, DataNotFoundError, check_choice
from .lowlevel import DEFAULT_ANTIALIAS, PROTOCOLS, pil_resize, protocol_base, resize
from .toy_features import ToyFeatureSet

__all__ = ["NetworkSpec", "NETWORKS", "FEATURE_NAMES", "register_network", "find_weights", "load_state_dict",
           "build_network", "RealFeatureSet", "ToyFeatureSet", "make_feature_set", "IMAGENET_MEAN",
           "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: The feature names every feature set answers (two-way: first four; distances: last two).
FEATURE_NAMES = ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav")


@dataclass(frozen=True)
class NetworkSpec:
    """How one metric network is built, fed and tapped.

    Attributes
    ----------
    name : str
        Feature name (``"alexnet2"``...).
    weights_key : str
        Key of the weights in ``weights=`` and the network they belong to (``"alexnet"``).
    arch : str
        torchvision builder (``"alexnet"``), or ``"hf-clip"`` for a transformers folder.
    node : str
        Module whose output is the feature (forward hook), or ``"image_embeds"``.
    size : int
        Input side after the protocol's 256 resize; ``resize_mode`` its interpolation.
    files : tuple of str
        File (or folder) names looked for in ``weights_dir``; the first is the canonical one.
    source : str
        Where the file is normally obtained.
    """

    name: str
    weights_key: str
    arch: str
    node: str
    size: int
    resize_mode: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    files: tuple = ()
    source: str = ""
    builder_kwargs: dict = field(default_factory=dict)
    strict: bool = True
    label: str = ""


_ALEX = dict(weights_key="alexnet", arch="alexnet", size=256, files=("alexnet-owt-7be5be79.pth",
             "alexnet-owt-7be5be79.safetensors", "alexnet.safetensors"),
             source="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (torchvision AlexNet_Weights.IMAGENET1K_V1)")
NETWORKS: dict[str, NetworkSpec] = {
    "alexnet2": NetworkSpec("alexnet2", node="features.4", label="AlexNet(2)", **_ALEX),
    "alexnet5": NetworkSpec("alexnet5", node="features.11", label="AlexNet(5)", **_ALEX),
    "inception": NetworkSpec(
        "inception", "inception", "inception_v3", "avgpool", 342, label="Inception",
        files=("inception_v3_google-0cc3c7bd.pth", "inception_v3_google-0cc3c7bd.safetensors",
               "inception_v3.safetensors"),
        source="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth (Inception_V3_Weights.IMAGENET1K_V1)",
        builder_kwargs=dict(aux_logits=True, transform_input=True, init_weights=False)),
    "clip": NetworkSpec(
        "clip", "clip", "hf-clip", "image_embeds", 224, mean=CLIP_MEAN, std=CLIP_STD, label="CLIP",
        files=("clip-vit-large-patch14",),
        source="Hugging Face openai/clip-vit-large-patch14 (a folder with config.json and model.safetensors; "
               "`huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR`)"),
    "effnet": NetworkSpec(
        "effnet", "effnet", "efficientnet_b1", "avgpool", 255, label="EffNet-B",
        files=("efficientnet_b1-c27df63c.pth", "efficientnet_b1-c27df63c.safetensors", "efficientnet_b1.safetensors"),
        source="https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth (EfficientNet_B1_Weights.IMAGENET1K_V2)"),
    "swav": NetworkSpec(
        "swav", "swav", "resnet50", "avgpool", 224, label="SwAV", strict=False,
        files=("swav_800ep_pretrain.pth.tar", "swav_800ep_pretrain.safetensors", "swav_resnet50.safetensors"),
        source="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar (facebookresearch/swav "
               "hubconf 'resnet50'; 'module.' prefixes stripped, fc left random as the hub does)"),
    "vit_h_14": NetworkSpec(
        "vit_h_14", "vit_h_14", "vit_h_14", "logits", 518, resize_mode="bicubic", label="ViT-H/14 (n-way)",
        files=("vit_h_14_swag-80465313.pth", "vit_h_14_swag-80465313.safetensors", "vit_h_14.safetensors"),
        source="https://download.pytorch.org/models/vit_h_14_swag-80465313.pth (ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1)",
        builder_kwargs=dict(image_size=518)),
}
#: brain-diffuser's EffNet-B: legacy V1 weights (file name varies by torchvision version).
EFFNET_V1 = replace(NETWORKS["effnet"], weights_key="effnet_v1", size=224,
                    files=("efficientnet_b1_rwightman-533bc792.pth", "efficientnet_b1_rwightman-bac287d4.pth",
                           "efficientnet_b1_v1.safetensors"),
                    source="torchvision EfficientNet_B1_Weights.IMAGENET1K_V1 (efficientnet_b1_rwightman-*.pth; "
                           "exact file not verified)")


def register_network(spec: NetworkSpec) -> None:
    """Add or replace a network in :data:`NETWORKS` (e.g. another n-way classifier)."""
    NETWORKS[spec.name] = spec


def _torchvision():
    try:
        import torchvision.models as tvm
    except Exception as e:  # ImportError, or a torchvision built for another torch
        raise ImportError("The real-network metrics need torchvision matching your torch "
                          "(pip install 'brainrecon[metrics]'); the toy feature set does not "
                          f"(feature_set='toy'). Import failed with: {e}") from e
    return tvm


def find_weights(spec: NetworkSpec, weights=None, weights_dir=None) -> Path:
    """The local file/folder holding ``spec``'s weights, or a :class:`DataNotFoundError` listing every path tried.

    Looks at ``weights[spec.weights_key]`` (a path), then each of ``spec.files`` in
    ``weights_dir``, ``$BRAINRECON_WEIGHTS`` and ``$TORCH_HOME/hub/checkpoints``.
    """
    weights = weights or {}
    searched = []
    if spec.weights_key in weights and weights[spec.weights_key] is not None:
        p = Path(os.path.expanduser(str(weights[spec.weights_key])))
        if p.exists():
            return p
        searched.append(p)
    dirs = [d for d in (weights_dir, os.environ.get("BRAINRECON_WEIGHTS"),
                        Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints")
            if d]
    for d in dirs:
        for name in spec.files:
            p = Path(os.path.expanduser(str(d))) / name
            if p.exists():
                return p
            searched.append(p)
    raise DataNotFoundError(
        f"the weights of {spec.label or spec.name} ({spec.files[0]})", searched, data_card="metrics.md",
        hint=f"It is normally obtained from {spec.source}. Put it in the folder you pass as weights_dir "
             f"(`brainrecon evaluate DIR --weights FOLDER`) or pass weights={{'{spec.weights_key}': PATH}}; "
             "or use feature_set='toy'.")


def load_state_dict(path) -> dict:
    """Tensors of a weights file: safetensors, or ``torch.load(weights_only=True)``; never unpickles code."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read the weights file {path}: {e}. brainrecon reads .safetensors, "
                              "or tensor-only .pth files (torch.load(weights_only=True)).") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(sd).__name__}).")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def build_network(spec: NetworkSpec, path) -> torch.nn.Module:
    """The architecture of ``spec`` with the weights at ``path``, in eval mode."""
    if spec.arch == "hf-clip":
        try:
            return CLIPVisionModelWithProjection.from_pretrained(str(path), use_safetensors=True).eval()
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"could not load a CLIPVisionModelWithProjection from {path}: {e}") from e
    tvm = _torchvision()
    net = getattr(tvm, spec.arch)(weights=None, **spec.builder_kwargs)
    sd = load_state_dict(path)
    try:
        res = net.load_state_dict(sd, strict=spec.strict)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match torchvision's {spec.arch}: {str(e)[:600]}") from e
    if not spec.strict:
        body = [k for k in net.state_dict() if not k.startswith("fc.")]
        missing = [k for k in res.missing_keys if k in body]
        if missing:
            raise CheckpointError(f"{path} lacks {len(missing)} weights of {spec.arch} (e.g. {missing[:3]}).")
    return net.eval().requires_grad_(False)


def _normalise(x, mean, std):
    return (x - torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)) / torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)


class RealFeatureSet:
    """The published networks, from local weights (see module docstring).

    Parameters
    ----------
    weights_dir : path-like, optional
        Folder with the weights files (names in ``data_cards/metrics.md``).
    weights : dict, optional
        ``{weights_key: path}`` overrides (``alexnet``, ``inception``, ``clip``, ``effnet``,
        ``effnet_v1``, ``swav``, ``vit_h_14``).
    protocol : {"mindeye", "neuropictor", "brain-diffuser"}
    device : str
    batch_size : int
    antialias : bool
    """

    kind = "real"

    def __init__(self, weights_dir=None, weights=None, protocol: str = "mindeye", device="cpu",
                 batch_size: int = 32, antialias: bool = DEFAULT_ANTIALIAS):
        check_choice("protocol", protocol, PROTOCOLS)
        self.weights_dir, self.weights, self.protocol = weights_dir, dict(weights or {}), protocol
        self.device, self.batch_size, self.antialias = torch.device(device), int(batch_size), antialias
        self._nets: dict = {}

    def spec(self, name: str) -> NetworkSpec:
        check_choice("feature", name, list(NETWORKS))
        s = NETWORKS[name]
        if self.protocol == "brain-diffuser":
            s = EFFNET_V1 if name == "effnet" else replace(s, size=224)
        elif self.protocol == "neuropictor" and name == "clip":
            s = replace(s, resize_mode="bicubic")
        return s

    def available(self, names=FEATURE_NAMES) -> dict:
        """``{name: path or DataNotFoundError}`` without loading anything."""
        out = {}
        for n in names:
            try:
                out[n] = find_weights(self.spec(n), self.weights, self.weights_dir)
            except DataNotFoundError as e:
                out[n] = e
        return out

    def network(self, name: str) -> torch.nn.Module:
        s = self.spec(name)
        key = (s.weights_key, s.arch)
        if key not in self._nets:
            self._nets[key] = build_network(s, find_weights(s, self.weights, self.weights_dir)).to(self.device)
        return self._nets[key]

    def _input(self, x: torch.Tensor, s: NetworkSpec) -> torch.Tensor:
        if self.protocol == "brain-diffuser":
            x = pil_resize(x, s.size)
        else:
            size = s.size
            if s.arch == "hf-clip":
                size = int(self.network(s.name).config.image_size)
            x = resize(x, size, s.resize_mode, True if s.name == "vit_h_14" else self.antialias)
        return _normalise(x, s.mean, s.std)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, names=FEATURE_NAMES, based: bool = False) -> dict:
        """``{name: (N, D) float32 numpy}`` of ``images`` ((N, 3, H, W) in [0, 1]).

        ``based=True`` says the protocol's 256 resize was already applied.
        """
        x = images if based else protocol_base(images, self.protocol, self.antialias)
        out = {}
        groups: dict = {}
        for n in names:
            s = self.spec(n)
            groups.setdefault((s.weights_key, s.size, s.resize_mode), []).append(s)
        for specs in groups.values():
            net = self.network(specs[0].name)
            feats = {s.name: [] for s in specs}
            for i in range(0, len(x), self.batch_size):
                inp = self._input(x[i:i + self.batch_size], specs[0]).to(self.device)
                for s, f in self._forward(net, specs, inp).items():
                    feats[s].append(f.float().flatten(1).cpu())
            out.update({k: torch.cat(v).numpy() for k, v in feats.items()})
        return out

    def _forward(self, net, specs, inp) -> dict:
        if specs[0].arch == "hf-clip":
            return {specs[0].name: net(pixel_values=inp).image_embeds}
        if specs[0].node == "logits":
            return {specs[0].name: net(inp)}
        caught, hooks = {}, []
        for s in specs:
            hooks.append(net.get_submodule(s.node).register_forward_hook(
                lambda m, a, o, name=s.name: caught.__setitem__(name, o)))
        try:
            net(inp)
        finally:
            for h in hooks:
                h.remove()
        return caught

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor, classifier: str = "vit_h_14") -> np.ndarray:
        """Softmax over the classifier's classes for raw images (resize 518 bicubic + ImageNet normalise)."""
        s = self.spec(classifier)
        net = self.network(classifier)
        out = []
        for i in range(0, len(images), self.batch_size):
            inp = _normalise(resize(images[i:i + self.batch_size], s.size, s.resize_mode, True), s.mean, s.std)
            out.append(torch.softmax(net(inp.to(self.device)).float(), -1).cpu())
        return torch.cat(out).numpy()


def make_feature_set(feature_set="auto", weights_dir=None, weights=None, backbone="toy", protocol="mindeye",
                     device="cpu", batch_size: int = 32):
    """A feature set by name: ``"real"``, ``"toy"`` or ``"auto"``.

    ``"auto"`` is real when every file of :data:`FEATURE_NAMES` is found and torchvision
    imports, else toy.

    A :class:`RealFeatureSet` / :class:`ToyFeatureSet` instance is returned unchanged.
    """
    if not isinstance(feature_set, str):
        return feature_set
    check_choice("feature_set", feature_set, ("auto", "real", "toy"))
    if feature_set in ("auto", "real"):
        real = RealFeatureSet(weights_dir, weights, protocol, device, batch_size)
        if feature_set == "real":
            return real
        if all(isinstance(p, Path) for p in real.available().values()):
            try:
                _torchvision()
                return real
            except ImportError as e:
                import warnings

                warnings.warn(f"the real networks' weights were found but cannot run ({e}); using the toy "
                              "feature set.", stacklevel=2)
    return ToyFeatureSet(backbone, protocol, device)
