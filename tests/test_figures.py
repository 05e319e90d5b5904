"""Figures show as PNG wherever IPython displays them, without pyplot's inline backend."""
import ast
from pathlib import Path

import numpy as np

import brainrecon
from brainrecon.figures import Figure, figure_to_png


def _formats(obj):
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(obj)   # what a kernel sends the page (no backend set up)
    return data


def test_a_brainrecon_figure_displays_as_png_and_a_bare_one_as_text():
    from matplotlib.figure import Figure as Bare

    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    data = _formats(fig)
    assert data["image/png"][:4] == b"\x89PNG"
    bare = Bare(figsize=(2, 1.5))
    assert "image/png" not in _formats(bare) and _formats(bare)["text/plain"].startswith("<Figure size")


def test_figure_to_png_draws_what_is_on_the_figure():
    from PIL import Image
    import io

    blank, drawn = Figure(figsize=(2, 2)), Figure(figsize=(2, 2))
    drawn.subplots().imshow(np.zeros((4, 4)), cmap="gray")
    a = np.asarray(Image.open(io.BytesIO(figure_to_png(blank, dpi=50))).convert("L"))
    b = np.asarray(Image.open(io.BytesIO(figure_to_png(drawn, dpi=50))).convert("L"))
    assert a.shape == (100, 100) and a.min() == 255 and b.min() == 0     # white page vs a black image on it


def test_package_plots_return_displayable_figures():
    from brainrecon.data.scenes import make_scenes, plot_scenes
    from brainrecon.metrics.plotting import plot_reconstruction_grid

    sc = make_scenes(4, image_size=16, seed=0)
    imgs = sc.images.transpose(0, 3, 1, 2) / 255.0
    for fig in (plot_scenes(sc, n=4), plot_reconstruction_grid({"copy": imgs}, imgs, n=4)):
        assert isinstance(fig, Figure) and _formats(fig)["image/png"][:4] == b"\x89PNG"


def test_no_module_makes_a_bare_or_pyplot_figure():
    """Every figure of the package is brainrecon.figures.Figure (read from the sources)."""
    bad = []
    for f in Path(brainrecon.__file__).parent.rglob("*.py"):
        if f.name == "figures.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in ("matplotlib.figure", "matplotlib.pyplot"):
                bad.append(f"{f.name}:{node.lineno} from {node.module} import ...")
            if isinstance(node, ast.Import) and any(a.name == "matplotlib.pyplot" for a in node.names):
                bad.append(f"{f.name}:{node.lineno} import matplotlib.pyplot")
    assert not bad, bad
