"""Figures that show as images wherever they are displayed: JupyterLab, Voilà, a saved .ipynb.

Every ``plot_*`` in brainrecon returns a :class:`Figure`: a plain matplotlib figure, not registered
with pyplot (nothing accumulates in long sessions), that also knows how to show itself as a PNG.
A bare ``matplotlib.figure.Figure`` shows as the text ``<Figure size 480x280 with 6 Axes>`` unless
pyplot's inline backend happens to be active; this one carries ``_repr_png_``, which IPython's display
machinery (and so JupyterLab, Voilà and nbconvert) asks for first. Widgets show figures through
:func:`figure_to_png` in an ``ipywidgets.Image``, which needs no display hook at all.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as _MplFigure

__all__ = ["Figure", "figure_to_png"]


def figure_to_png(fig, dpi: float | None = None) -> bytes:
    """The PNG bytes of ``fig`` (any matplotlib figure), drawn with the Agg canvas.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    dpi : float, optional
        Resolution; default the figure's own (``figure.dpi``, 100 unless set).

    Returns
    -------
    bytes
        Starts with the PNG signature ``b"\\x89PNG"``.
    """
    if fig.canvas is None or not hasattr(fig.canvas, "print_figure"):  # pragma: no cover - any Figure has one
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else fig.dpi, facecolor="white")
    return buf.getvalue()


class Figure(_MplFigure):
    """A :class:`matplotlib.figure.Figure` that displays as a PNG in notebooks (``_repr_png_``).

    Use it as the matplotlib class itself: ``fig = Figure(figsize=(4, 3)); ax = fig.subplots()``;
    save it with ``fig.savefig(path)``.
    """

    def _repr_png_(self) -> bytes:
        return figure_to_png(self)
