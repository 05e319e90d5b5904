"""Exceptions for people: each one says what was wrong and how to fix it.

Every error brainrecon raises on bad input derives from :class:`BrainreconError`, so
callers can catch them together, and from the matching builtin (``FileNotFoundError``,
``ValueError``), so generic handlers keep working.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "BrainreconError",
    "DataNotFoundError",
    "InvalidInputError",
    "CheckpointError",
    "check_finite",
    "check_choice",
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
