"""Real-network metrics, part 1 (AlexNet, Inception, CLIP, loading rules): every one runs from local weight files (fake: random init, genuine keys and shapes).

The reference path is MindEye's: torchvision ``create_feature_extractor`` with torchvision
transforms, ``np.corrcoef`` two-way and ``scipy`` correlation distances.
"""
import sys

import numpy as np
import pytest
import torch

from brainrecon.errors import CheckpointError, DataNotFoundError
from brainrecon.metrics import (NETWORKS, NetworkSpec, RealFeatureSet, correlation_distance,
                                find_weights, make_feature_set, register_network, two_way)

tv = pytest.importorskip("torchvision")
from metrics_fakes import write_fake_real_weights  # noqa: E402


NAMES = ["alexnet2", "alexnet5", "inception"]
WHICH = ("alexnet", "inception", "clip")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    torch.set_num_threads(2)
    return write_fake_real_weights(tmp_path_factory.mktemp("weights"), WHICH)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(np.kron(rng.random((3, 3, 8, 8)), np.ones((1, 1, 12, 12)))).float()   # 96 px
    rec = (gt + 0.3 * torch.from_numpy(rng.standard_normal(gt.shape)).float()).clamp(0, 1)
    return rec, gt


def _reference(net, node, size, mean, std, x, mode="bilinear"):
    from torchvision import transforms as T
    from torchvision.models.feature_extraction import create_feature_extractor

    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[mode]
    x = T.Resize((256, 256), interpolation=T.InterpolationMode.BILINEAR, antialias=False)(x)
    pre = T.Compose([T.Resize((size, size), interpolation=interp, antialias=False), T.Normalize(mean, std)])
    f = create_feature_extractor(net, return_nodes=[node]).eval()
    with torch.no_grad():
        return f(pre(x))[node].float().flatten(1).numpy()


@pytest.mark.parametrize("name", NAMES)
def test_torchvision_network_matches_create_feature_extractor(weights_dir, pairs, name):
    rec, gt = pairs
    if name == "inception":                 # the slowest network on a CPU: two pairs are enough
        rec, gt = rec[:2], gt[:2]
    fs = RealFeatureSet(weights_dir)
    spec = fs.spec(name)
    ours_r, ours_g = fs.extract(rec, (name,))[name], fs.extract(gt, (name,))[name]
    net = fs.network(name)
    ref_r = _reference(net, spec.node, spec.size, spec.mean, spec.std, rec)
    ref_g = _reference(net, spec.node, spec.size, spec.mean, spec.std, gt)
    dims = {"alexnet2": 192 * 31 * 31, "alexnet5": 256 * 15 * 15, "inception": 2048, "effnet": 1280, "swav": 2048}
    assert ours_r.shape == (len(rec), dims[name])
    np.testing.assert_allclose(ours_r, ref_r, rtol=1e-5, atol=1e-6)
    if name in ("effnet", "swav"):
        from scipy.spatial.distance import correlation

        ref = np.mean([correlation(ref_g[i], ref_r[i]) for i in range(len(rec))])
        assert correlation_distance(ours_r, ours_g) == pytest.approx(ref, abs=1e-6)
    else:
        n = len(rec)
        r = np.corrcoef(ref_g, ref_r)[:n, n:]
        ref = np.mean((r < np.diag(r)).sum(0)) / (n - 1)
        assert two_way(ours_r, ours_g) == pytest.approx(ref, abs=1e-6)


def test_inception_is_built_as_the_weights_aware_builder(weights_dir):
    net = RealFeatureSet(weights_dir).network("inception")
    assert net.transform_input is True and net.AuxLogits is not None and not net.training


def test_clip_from_a_hugging_face_folder(weights_dir, pairs):
    from transformers import CLIPVisionModelWithProjection

    rec, _ = pairs
    for protocol, mode in (("mindeye", "bilinear"), ("neuropictor", "bicubic")):
        fs = RealFeatureSet(weights_dir, protocol=protocol)
        ours = fs.extract(rec, ("clip",))["clip"]
        from torchvision import transforms as T

        net = CLIPVisionModelWithProjection.from_pretrained(weights_dir / "clip-vit-large-patch14").eval()
        interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[mode]
        x = T.Resize((256, 256), interpolation=T.InterpolationMode.BILINEAR, antialias=False)(rec)
        x = T.Resize((224, 224), interpolation=interp, antialias=False)(x)
        if mode == "bicubic":
            x = x.clamp(0, 1)
        x = T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))(x)
        with torch.no_grad():
            ref = net(pixel_values=x).image_embeds.numpy()
        assert ours.shape == (3, 24)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_missing_file_names_it_and_its_source(tmp_path):
    with pytest.raises(DataNotFoundError) as e:
        find_weights(NETWORKS["alexnet5"], weights_dir=tmp_path)
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "download.pytorch.org" in msg and str(tmp_path) in msg
    assert "metrics.md" in msg and "feature_set='toy'" in msg
    assert make_feature_set("auto", weights_dir=tmp_path, backbone=_FakeBackbone()).kind == "toy"


class _FakeBackbone:
    """Just enough of a Backbone for ToyFeatureSet's constructor."""

    class image_encoder:
        class config:
            num_hidden_layers = 3

    def encode_image_features(self, images, layers=()):
        raise NotImplementedError

    def _require_image_encoder(self):
        return self.image_encoder


def test_wrong_shapes_and_pickles_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(3, 3, 3, 3)}, str(tmp_path / "alexnet.safetensors"))
    with pytest.raises(CheckpointError, match="alexnet"):
        RealFeatureSet(tmp_path).network("alexnet2")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "inception_v3_google-0cc3c7bd.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        RealFeatureSet(tmp_path).network("inception")


def test_n_way_classifier_from_local_weights(tmp_path, pairs):
    """The n-way classifier path (ViT-H/14 in real use; a small torchvision classifier here, 2.5 GB less)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file(tv.models.resnet18(weights=None).state_dict(), str(tmp_path / "resnet18.safetensors"))
    register_network(NetworkSpec("resnet18_test", "resnet18_test", "resnet18", "logits", 64, resize_mode="bicubic",
                                 files=("resnet18.safetensors",), source="test"))
    try:
        rec, gt = pairs
        fs = RealFeatureSet(tmp_path)
        p = fs.class_probabilities(gt, "resnet18_test")
        assert p.shape == (3, 1000) and np.allclose(p.sum(1), 1, atol=1e-5)
        from brainrecon.metrics import n_way_top_k

        assert n_way_top_k(p, target_probs=p, n_way=50) == 1.0
    finally:
        NETWORKS.pop("resnet18_test")


def test_clear_import_error_without_torchvision(monkeypatch, tmp_path):
    from brainrecon.metrics import networks

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match=r"brainrecon\[metrics\]"):
        networks._torchvision()
