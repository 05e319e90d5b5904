"""Lazy re-exports for package ``__init__`` files (PEP 562), so ``import brainrecon.x`` stays cheap."""
from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, exports: dict, eager=()):
    """``(__getattr__, __dir__, __all__)`` for a package whose public names live in submodules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict
        ``{public name: submodule}``; the submodule is imported on first access.
    eager : sequence of str
        Names the package already imported itself (listed in ``__all__`` too).
    """
    names = [*eager, *sorted(exports)]

    def __getattr__(name):
        if name in exports:
            return getattr(import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return list(names)

    return __getattr__, __dir__, names
