"""Real-network metrics from local weight files, part 2: EffNet-B, SwAV, the suite, brain-diffuser inputs.

(Split from ``test_metrics_networks.py`` to keep each file short; same fakes and reference.)
"""
import numpy as np
import pytest
import torch

from brainrecon.metrics import RealFeatureSet, correlation_distance, evaluate, make_feature_set

tv = pytest.importorskip("torchvision")
from metrics_fakes import write_fake_real_weights  # noqa: E402
from test_metrics_networks import _reference, pairs  # noqa: E402,F401

WHICH = ("alexnet", "effnet", "swav", "clip")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    torch.set_num_threads(2)
    return write_fake_real_weights(tmp_path_factory.mktemp("weights"), WHICH)


@pytest.mark.parametrize("name", ["effnet", "swav"])
def test_distance_networks_match_create_feature_extractor(weights_dir, pairs, name):  # noqa: F811
    from scipy.spatial.distance import correlation

    rec, gt = pairs
    fs = RealFeatureSet(weights_dir)
    spec = fs.spec(name)
    both = fs.extract(torch.cat([rec, gt]), (name,))[name]
    ours_r, ours_g = both[:3], both[3:]
    ref = _reference(fs.network(name), spec.node, spec.size, spec.mean, spec.std, torch.cat([rec, gt]))
    assert ours_r.shape == (3, {"effnet": 1280, "swav": 2048}[name])
    assert ref.std() > 1e-3                                   # calibrated fakes: features are not vanishing
    np.testing.assert_allclose(both, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    want = np.mean([correlation(ref[3 + i], ref[i]) for i in range(3)])
    assert correlation_distance(ours_r, ours_g) == pytest.approx(want, abs=1e-6)


def test_swav_checkpoint_with_module_prefix_and_extra_keys(weights_dir):
    net = RealFeatureSet(weights_dir).network("swav")
    sd = torch.load(weights_dir / "swav_800ep_pretrain.pth.tar", weights_only=True)
    assert torch.equal(net.conv1.weight, sd["module.conv1.weight"])



def test_full_suite_on_real_feature_set(weights_dir, pairs):  # noqa: F811
    rec, gt = pairs
    table = evaluate(rec, gt, feature_set="real", weights_dir=weights_dir, metrics=["alexnet2", "clip"])
    assert list(table.metric) == ["alexnet2", "clip"] and set(table.feature_set) == {"real"}
    same = evaluate(gt, gt, feature_set="real", weights_dir=weights_dir, metrics=["alexnet5"])
    assert list(same.value) == [1.0]
    assert make_feature_set("real", weights_dir=weights_dir).kind == "real"
    # by default the suite leaves out n-way when the classifier's weights are absent (no ViT-H/14 here)
    from brainrecon.metrics.suite import _has_classifier

    assert not _has_classifier(RealFeatureSet(weights_dir))


def test_brain_diffuser_protocol_feeds_224_pil_inputs(weights_dir, pairs):  # noqa: F811
    rec, _ = pairs
    fs = RealFeatureSet(weights_dir, protocol="brain-diffuser", weights={"effnet_v1": weights_dir /
                                                                        "efficientnet_b1-c27df63c.safetensors"})
    assert fs.spec("inception").size == 224 and fs.spec("effnet").weights_key == "effnet_v1"
    assert fs.extract(rec, ("alexnet2",))["alexnet2"].shape == (3, 192 * 27 * 27)   # 224 input
    assert fs.extract(rec, ("effnet",))["effnet"].shape == (3, 1280)
