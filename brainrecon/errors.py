"""Exceptions for people: each one says what was wrong and how to fix it.

Every error brainrecon raises on bad input derives from :class:`BrainreconError`, so
callers can catch them together, and from the matching builtin (``FileNotFoundError``,
``ValueError``), so generic handlers keep working.
"""
from __future__ import annotations

import contextlib
import numbers
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "BrainreconError",
    "DataNotFoundError",
    "InvalidInputError",
    "CheckpointError",
    "check_finite",
    "check_choice",
    "check_range",
    "check_device",
    "unreadable_file",
    "reading",
]

DATA_CARDS_HINT = "data_cards/"


class BrainreconError(Exception):
    """Base class of brainrecon's own errors."""


class DataNotFoundError(BrainreconError, FileNotFoundError):
    """Local data that brainrecon needs is missing.

    Parameters
    ----------
    what : str
        What was being looked for, e.g. ``"NSD betas for subj01, session 3"``.
    searched : sequence of path-like
        Every path that was tried, in the order tried. Each is reported with
        ``(missing)`` or ``(exists)``.
    data_card : str, optional
        Name of the data card that documents the expected layout (e.g. ``"nsd.md"``).
    hint : str, optional
        One more sentence on what to do.
    """

    def __init__(self, what: str, searched: Iterable = (), data_card: str | None = None,
                 hint: str | None = None):
        self.what = what
        self.searched = [Path(p) for p in searched]
        lines = [f"{what} was not found."]
        if self.searched:
            lines.append("brainrecon looked in:")
            for p in self.searched:
                lines.append(f" - {p} ({'exists' if p.exists() else 'missing'})")
        lines.append("brainrecon never downloads data or weights.")
        if data_card:
            lines.append(f"The expected layout is described in {DATA_CARDS_HINT}{data_card} "
                         f"(also `brainrecon card {Path(data_card).stem}`).")
        if hint:
            lines.append(hint)
        lines.append("To try brainrecon without data, use the embedded toy world: "
                     "brainrecon.data.toyworld.make_toyworld() or `brainrecon toyworld`.")
        super().__init__("\n".join(lines))


class InvalidInputError(BrainreconError, ValueError):
    """Input with the wrong shape, values or names (voxel counts, NaNs, subjects...)."""


class CheckpointError(BrainreconError, OSError):
    """A saved file or folder is corrupt, incomplete or of the wrong kind."""


def check_finite(array, where: str) -> None:
    """Refuse arrays with NaN or Inf, naming where and the first bad index.

    Parameters
    ----------
    array : array-like
        Values to check (numpy array or torch tensor).
    where : str
        Human description of the array, e.g. ``"betas of subj01 session 2"``.

    Raises
    ------
    InvalidInputError
        If any value is not finite.
    """
    import numpy as np

    a = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidInputError(
            f"{where} contains {int(bad.sum())} non-finite value(s) (NaN or Inf); first at index {idx}. "
            "Fix or drop those entries (e.g. np.nan_to_num, or mask the voxels) before passing them in.")


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise a two-line error if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise InvalidInputError(f"'{name}' must be one of {tuple(choices)}.\n{value!r} was provided.")


def check_range(name: str, value, low=None, high=None, kind=int):
    """Refuse a number outside ``[low, high]`` (either bound optional) or of the wrong kind.

    Parameters
    ----------
    name : str
        How the user spells it, e.g. ``"--n-test"`` or ``"n_test"``.
    value : int or float
    low, high : number, optional
        Inclusive bounds.
    kind : {int, float}
        ``int`` refuses floats and booleans; ``float`` takes any real number.

    Returns
    -------
    int or float
        ``value`` as ``kind``.

    Raises
    ------
    InvalidInputError
    """
    ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
    if ok and kind is float and value != value:          # NaN
        ok = False
    if ok and ((low is not None and value < low) or (high is not None and value > high)):
        ok = False
    if not ok:
        span = (f" in {low}..{high}" if low is not None and high is not None else
                f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
        raise InvalidInputError(f"'{name}' must be {'an integer' if kind is int else 'a number'}{span}; "
                                f"{value!r} was provided.")
    return kind(value)


def check_device(device):
    """The ``torch.device`` that ``device`` names, refused if this machine does not have it.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` means the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    InvalidInputError
        An unknown device string, an accelerator that is not available, or a CUDA index
        past the last GPU.
    """
    import torch

    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidInputError(f"'device' must be a torch device such as 'cpu', 'cuda' or 'cuda:0'; "
                                f"{device!r} was provided ({err}).") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise InvalidInputError(f"device {str(device)!r} is not available on this machine (torch {torch.__version__}"
                                f" sees no {dev.type} device). Pass device='cpu', or run where that device exists.")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise InvalidInputError(f"device {str(device)!r} does not exist: this machine has {count()} {dev.type} "
                                f"device(s), {dev.type}:0..{dev.type}:{count() - 1}. Pass one of those, or 'cpu'.")
    return dev


def unreadable_file(path, err: BaseException, fix: str) -> "CheckpointError":
    """A :class:`CheckpointError` for a file that exists but cannot be read.

    Parameters
    ----------
    path : path-like
        The file (named in the message).
    err : exception
        What the reading library raised (its type and text are quoted).
    fix : str
        One sentence on what to do, e.g. ``"Download it again."``.
    """
    return CheckpointError(f"{path} could not be read: it is truncated, corrupt or not the expected format "
                           f"({type(err).__name__}: {err}). {fix}")


@contextlib.contextmanager
def reading(path, fix: str):
    """Turn any failure of the library reading ``path`` into :func:`unreadable_file`'s error.

    brainrecon's own errors (shape checks inside the block) and ``MemoryError`` pass through unchanged.

    Examples
    --------
    >>> with reading("cfg.json", "Write it again."):   # doctest: +SKIP
    ...     cfg = json.loads(Path("cfg.json").read_text())
    """
    try:
        yield
    except (BrainreconError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - every reader (h5py, nibabel, scipy, json, safetensors) has its own
        raise unreadable_file(path, err, fix) from err
