"""Image and brain retrieval in an embedding space (MindEye's 300-way top-1, §3.5)."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from .identification import mean_ci

__all__ = ["retrieval", "retrieval_loops", "topk_accuracy"]


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64).reshape(len(e), -1)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(n == 0, 1.0, n)


def topk_accuracy(sim: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose own column (the diagonal) is among the row's top ``k``."""
    sim = np.asarray(sim)
    own = np.diag(sim)
    rank = (sim > own[:, None]).sum(1)
    return float(np.mean(rank < k))


def retrieval_loops(brain_embeddings, image_embeddings, n_way: int = 300, n_loops: int = 30, seed: int = 42,
                    k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-loop forward and backward top-k accuracies, arrays of shape (n_loops,).

    In each loop ``n_way`` pairs are drawn without replacement
    (``np.random.seed(seed); np.random.choice(N, n_way, replace=False)`` as MindEye2, with
    ``n_way = min(n_way, N)``); embeddings are flattened and L2-normalised; forward (image
    retrieval) ranks images for each brain embedding, backward (brain retrieval) the reverse.
    """
    b, v = np.asarray(brain_embeddings), np.asarray(image_embeddings)
    if len(b) != len(v):
        raise InvalidInputError(f"{len(b)} brain embeddings but {len(v)} image embeddings; they must pair up.")
    if b.reshape(len(b), -1).shape[1] != v.reshape(len(v), -1).shape[1]:
        raise InvalidInputError(f"brain embeddings {b.shape[1:]} and image embeddings {v.shape[1:]} must live "
                                "in the same space (same size per image).")
    n = len(b)
    if n < 2:
        raise InvalidInputError("retrieval needs at least 2 pairs.")
    n_way = int(min(n_way, n))
    rs = np.random.RandomState(seed)
    b, v = _unit(b), _unit(v)
    fwd, bwd = np.zeros(n_loops), np.zeros(n_loops)
    for t in range(n_loops):
        idx = rs.choice(n, n_way, replace=False)
        sim = b[idx] @ v[idx].T           # sim[i, j] = cos(brain_i, image_j)
        fwd[t] = topk_accuracy(sim, k)
        bwd[t] = topk_accuracy(sim.T, k)
    return fwd, bwd


def retrieval(brain_embeddings, image_embeddings, n_way: int = 300, n_loops: int = 30, seed: int = 42,
              k: int = 1, confidence: float = 0.95) -> dict:
    """Forward ("image retrieval") and backward ("brain retrieval") top-k accuracy with CIs.

    Parameters
    ----------
    brain_embeddings : array (N, ...)
        Embeddings predicted from the brain, in the same space as ``image_embeddings``.
    image_embeddings : array (N, ...)
        Embeddings of the seen images, same order.
    n_way : int
        Candidates per loop (300 in MindEye; all N when fewer). Chance ``k / n_way``.
    n_loops, seed, k, confidence
        30 loops, seed 42, top-1 and a 95% normal interval over loops as in MindEye2.

    Returns
    -------
    dict
        ``fwd``, ``fwd_ci`` (lo, hi), ``bwd``, ``bwd_ci``, ``n_way``, ``chance``.
    """
    fwd, bwd = retrieval_loops(brain_embeddings, image_embeddings, n_way, n_loops, seed, k)
    f, b = mean_ci(fwd, confidence), mean_ci(bwd, confidence)
    n_way = int(min(n_way, len(np.asarray(brain_embeddings))))
    return {"fwd": f[0], "fwd_ci": (f[1], f[2]), "bwd": b[0], "bwd_ci": (b[1], b[2]), "n_way": n_way,
            "chance": k / n_way}
