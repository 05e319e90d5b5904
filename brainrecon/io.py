"""Atomic writes, and the checks of files and folders done before any compute.

Files are written to a temporary sibling and renamed into place; folders are built
in a temporary sibling folder and renamed into place, replacing an older folder only
once the new one is complete, so nothing brainrecon writes is ever left half-written.

:func:`check_output_dir` proves an output folder can be written before any work starts;
:func:`read_json` and :func:`check_safetensors` turn unreadable inputs into a
:class:`~brainrecon.errors.CheckpointError` that names the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open

from .errors import CheckpointError, InvalidInputError, reading

__all__ = ["atomic_file", "atomic_dir", "write_json", "read_json", "check_output_dir", "check_safetensors"]

#: Suffixes of pickled weights (``torch.save``), which brainrecon never loads.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temporary file that is renamed to ``path`` only if the block succeeds.

    Examples
    --------
    >>> with atomic_file("out.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder that replaces ``path`` only if the block succeeds.

    An existing folder at ``path`` is kept until the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent, default=_json_default)
    return Path(path)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path, fix: str) -> dict:
    """The JSON object in ``path``; a truncated or non-object file raises a :class:`CheckpointError`.

    Parameters
    ----------
    path : path-like
    fix : str
        What to do about a bad file (named in the error), e.g. ``"Write it again with ..."``.
    """
    path = Path(path)
    with reading(path, fix):
        obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a JSON {type(obj).__name__}, not an object ({{...}}). {fix}")
    return obj


def check_output_dir(path, what: str = "the output folder") -> Path:
    """Prove that a folder can be created or written at ``path`` before any work is done.

    Nothing is left behind: the nearest existing folder gets a probe file that is removed
    at once, and no missing folder is created.

    Parameters
    ----------
    path : path-like
    what : str
        How the error calls it, e.g. ``"--out"``.

    Returns
    -------
    Path

    Raises
    ------
    InvalidInputError
        ``path`` (or a parent) is an existing file, or the folder cannot be written.
    """
    path = Path(path).expanduser()
    probe_in = path
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InvalidInputError(f"{what} {str(path)!r} cannot be a folder: {probe_in} is an existing file. "
                                "Pass a folder path (a new one, or an existing folder).")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".brainrecon-write-test.", dir=probe_in)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise InvalidInputError(f"{what} {str(path)!r} cannot be written: {probe_in} does not accept new files "
                                f"({err.strerror or err}). Pass a folder you can write to, or fix its "
                                "permissions.") from None
    return path


def check_safetensors(folder, what: str, fix: str) -> list:
    """The ``.safetensors`` files of a model folder, each proven complete (headers read, no data).

    Parameters
    ----------
    folder : path-like
        A ``save_pretrained`` folder (config + weights).
    what : str
        What the folder holds, e.g. ``"the U-Net"``.
    fix : str
        What to do about a truncated file.

    Raises
    ------
    CheckpointError
        The folder has no safetensors weights (pickled ``.bin``/``.pt`` files are named: brainrecon
        never unpickles), or one of them is truncated or corrupt (named).
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLED_WEIGHTS)
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights file"
        raise CheckpointError(
            f"{what} in {folder} has {found}. brainrecon loads safetensors only and never unpickles a file "
            "(a pickle can run code). Convert a folder you trust once, in Python: "
            "model = <Class>.from_pretrained(folder); model.save_pretrained(folder, safe_serialization=True).")
    for f in files:
        with reading(f, fix), safe_open(str(f), "pt") as handle:
            handle.keys()
    return files
