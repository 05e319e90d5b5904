"""Two-way identification, correlation distances, n-way and retrieval on features with known answers."""
import numpy as np
import pytest
from scipy.spatial.distance import correlation

from brainrecon.errors import InvalidInputError
from brainrecon.metrics import (correlation_distance, correlation_distance_per_image, mean_ci, n_way_top_k,
                                n_way_top_k_per_image, retrieval, retrieval_loops, two_way, two_way_pairwise,
                                two_way_per_image)


def _mindeye_two_way(pred, real):
    """MindEye's ``two_way_identification`` verbatim (np.corrcoef over the stacked sets)."""
    n = len(pred)
    r = np.corrcoef(real, pred)[:n, n:]
    congruent = np.diag(r)
    success = r < congruent
    return np.mean(success.sum(0)) / (n - 1)


def test_identical_features_identify_perfectly():
    f = np.random.default_rng(0).standard_normal((30, 50))
    assert two_way(f, f) == 1.0
    assert correlation_distance(f, f) == pytest.approx(0.0, abs=1e-12)


def test_shuffled_pairs_are_near_chance():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((400, 64))
    pred = real + 0.5 * rng.standard_normal(real.shape)
    assert two_way(pred, real) > 0.99
    shuffled = pred[rng.permutation(len(pred))]
    assert two_way(shuffled, real) == pytest.approx(0.5, abs=0.03)


def test_two_way_computed_three_ways_agrees():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((25, 40))
    pred = real + 4.0 * rng.standard_normal(real.shape)
    a, b, c = two_way(pred, real), two_way_pairwise(pred, real), _mindeye_two_way(pred, real)
    assert 0.6 < a < 1.0
    assert a == pytest.approx(b, abs=1e-12) and a == pytest.approx(c, abs=1e-12)


def test_two_way_hand_case():
    real = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    # pred 0 matches real 0; pred 1 is real 2 (wrong); pred 2 lies between real 1 and real 2, closer to 2
    pred = np.array([[1.0, 0, 0], [0, 0, 1], [0, 0.4, 1]])
    # r(real_i, pred_j): pred0 wins both; pred1 (own r=-0.5) loses to real2 (r=1), ties real0 (-0.5 < -0.5 false)
    per = two_way_per_image(pred, real)
    assert per[0] == 1.0 and per[1] == 0.0
    r = np.corrcoef(real, pred)[:3, 3:]
    assert per[2] == (int(r[0, 2] < r[2, 2]) + int(r[1, 2] < r[2, 2])) / 2 == 1.0
    assert two_way(pred, real) == pytest.approx(2 / 3)


def test_correlation_distance_is_scipys():
    rng = np.random.default_rng(3)
    real, pred = rng.standard_normal((6, 20)), rng.standard_normal((6, 20))
    ref = [correlation(real[i], pred[i]) for i in range(6)]
    assert np.allclose(correlation_distance_per_image(pred, real), ref, atol=1e-12)
    assert correlation_distance(-real, real) == pytest.approx(2.0)


def test_n_way_hand_cases():
    c = 10
    label_top = np.full((3, c), 0.01)
    label_top[:, 4] = 0.9
    assert n_way_top_k(label_top, target_labels=[4, 4, 4], n_way=5) == 1.0
    lowest = np.linspace(1, 0.1, c)[None].repeat(3, 0)
    assert n_way_top_k(lowest, target_labels=[9, 9, 9], n_way=5) == 0.0         # the label is the least likely
    # label ranked 2nd of all: top-2 always hits; top-1 hits only when the best class is not drawn:
    p = np.linspace(1, 0.1, c)[None].repeat(200, 0)                   # class 0 best, class 1 second
    acc = n_way_top_k_per_image(p, target_labels=np.ones(200, int), n_way=4, top_k=1, n_trials=50, seed=0)
    assert np.mean(acc) == pytest.approx(1 - 3 / 9, abs=0.02)         # P(class 0 not among 3 of 9 distractors)
    assert n_way_top_k(p, target_labels=np.ones(200, int), n_way=4, top_k=2) == 1.0
    assert n_way_top_k(p[:2], target_probs=p[:2], n_way=50) == 1.0     # n_way capped at C; label = arg-max


def test_retrieval_perfect_chance_and_hand_case():
    rng = np.random.default_rng(4)
    e = rng.standard_normal((500, 32))
    r = retrieval(e * 3.0, e)                                           # scale does not matter (cosine)
    assert r["fwd"] == 1.0 and r["bwd"] == 1.0 and r["n_way"] == 300
    r = retrieval(rng.standard_normal((500, 32)), e)
    assert r["fwd"] < 0.02 and r["chance"] == pytest.approx(1 / 300)
    # hand case, 3 pairs: brain 0 -> image 0; brain 1 and 2 both closest to image 2
    b = np.array([[1.0, 0, 0], [0, 0.2, 1], [0, 0.1, 1]])
    v = np.eye(3)
    fwd, bwd = retrieval_loops(b, v, n_way=300, n_loops=3)
    assert np.allclose(fwd, 2 / 3)          # brain 0 and 2 right, brain 1 picks image 2
    assert np.allclose(bwd, 1.0)            # image 1 -> brain 1 (0.20 > 0.10), image 2 -> brain 2 (0.995 > 0.98)
    r = retrieval(b, v)
    assert r["n_way"] == 3 and r["fwd_ci"] == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_retrieval_batches_follow_mindeye_seed():
    """Each loop's 300 ids are ``np.random.seed(42); np.random.choice(N, 300, replace=False)`` in turn."""
    rng = np.random.default_rng(5)
    e = rng.standard_normal((982, 8))
    b = e + 1.0 * rng.standard_normal(e.shape)
    fwd, _ = retrieval_loops(b, e, n_loops=2)
    np.random.seed(42)
    for t in range(2):
        idx = np.random.choice(982, 300, replace=False)
        bb = b[idx] / np.linalg.norm(b[idx], axis=1, keepdims=True)
        vv = e[idx] / np.linalg.norm(e[idx], axis=1, keepdims=True)
        assert fwd[t] == np.mean((bb @ vv.T).argmax(1) == np.arange(300))


def test_mean_ci_is_normal_interval_with_population_std():
    v = np.array([0.2, 0.4, 0.6, 0.8])
    m, lo, hi = mean_ci(v)
    half = 1.959963984540054 * v.std() / 2
    assert m == 0.5 and lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)


def test_shape_errors_say_both_sides():
    with pytest.raises(InvalidInputError, match=r"\(3, 4\).*\(3, 5\)"):
        two_way(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(InvalidInputError, match="pair up"):
        retrieval(np.zeros((3, 4)), np.zeros((2, 4)))
