"""The explorer: one page to pick a subject, a test scan and a method and drive the reconstruction.

``notebooks/explorer.py`` is the thin notebook around :func:`view_explorer`; ``brainrecon explore``
serves it as a single Voilà page. Every figure is a PNG in an ``ipywidgets.Image``
(:func:`brainrecon.figures.figure_to_png`), so the page shows images in Voilà, JupyterLab and a saved
notebook alike.

The view holds one reconstructor per (method, subject) — a reconstructor is trained for one subject —
and shows, for the chosen scan:

* the **main panel**: the seen image, the chosen method's reconstruction at the current settings and
  the input flatmap;
* the **methods row**: every method that has a reconstructor for this subject, on the same scan with
  the same settings and seed, side by side with the seen image.

Controls: ``subject``, ``scan``, ``method``; control scale ``α`` (NeuroPictor Eq. 7), classifier-free
guidance, and the semantic source of the swap (``"its own"`` or another scan's semantics). The
labels under the controls say what was drawn (``status``). Methods whose pipelines take further
settings (κ, η, stage-2 iterations) add their controls here as they land.
"""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import torch
from transformers.utils import logging as hf_logging

from .data.surface import plot_flatmap
from .errors import InvalidInputError
from .figures import Figure, figure_to_png
from .sampling import load_reconstructor, make_test_maps
from .sampling.demo import make_demo_world

__all__ = ["ExplorerView", "view_explorer"]

_OWN = -1          # the semantic picker's "its own semantics"


def _strip(ax):
    ax.set_xticks([])
    ax.set_yticks([])


class ExplorerView(W.VBox):
    """Subject, scan and method pickers; α, CFG and semantic-swap controls; main panel and methods row.

    Parameters
    ----------
    reconstructors : dict
        ``{(method, subject): BrainToImagePipeline}``; see :func:`view_explorer`.
    world : ToyWorld
        The world whose held-out shared test scans are shown.
    n_test : int
        Test scans offered per subject.
    seed : int
        Scan ``i`` always uses the generator ``seed + i``.
    num_inference_steps : int, optional
        Default each reconstructor's own.

    Attributes
    ----------
    subject, scan, method, semantics : ipywidgets.Dropdown
    control_scale, guidance_scale : ipywidgets.FloatSlider
    panel, methods_panel : ipywidgets.Image
        The main panel and the methods row as PNGs (what the page shows).
    figure, methods_figure : matplotlib.figure.Figure
        The figures those PNGs were drawn from.
    reconstruction : Tensor ``(3, H, W)``
        The chosen method's current reconstruction; :attr:`row` ``{method: (3, H, W)}`` the row's.
    status : ipywidgets.Label
        What the main panel shows, e.g. ``neuropictor · subj01 · scan 3 · α = 1 · CFG = 5``.
    """

    def __init__(self, reconstructors: dict, world, n_test: int = 12, seed: int = 0,
                 num_inference_steps: int | None = None):
        if not reconstructors:
            raise InvalidInputError("view_explorer needs at least one reconstructor.")
        self.reconstructors, self.world, self.seed = dict(reconstructors), world, int(seed)
        self.n_test, self.steps = int(n_test), num_inference_steps
        self._data = {}
        for pipe in self.reconstructors.values():
            pipe.set_progress_bar_config(disable=True)
        subjects = sorted({s for _, s in self.reconstructors})
        first = next(iter(self.reconstructors.values()))
        gs = float(first.config.default_guidance_scale)
        self.subject = W.Dropdown(options=subjects, value=subjects[0], description="subject")
        self.method = W.Dropdown(description="method")
        self.scan = W.Dropdown(description="scan")
        self.semantics = W.Dropdown(description="semantics")
        self.control_scale = W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="α",
                                           continuous_update=False)
        self.guidance_scale = W.FloatSlider(value=gs, min=0.0, max=max(10.0, 2 * gs), step=0.5,
                                            description="CFG", continuous_update=False)
        self.status = W.Label()
        # natural size, left-aligned: a flex box would otherwise stretch a small PNG to the page's width
        self.panel, self.methods_panel = (W.Image(format="png", layout=W.Layout(width="auto", align_self="flex-start"))
                                          for _ in range(2))
        self.figure = self.methods_figure = self.reconstruction = None
        self.row = {}
        self._quiet = False
        self._fill_subject()
        self.subject.observe(self._on_subject, names="value")
        for w in (self.method, self.scan, self.semantics, self.control_scale, self.guidance_scale):
            w.observe(self._on_change, names="value")
        super().__init__([
            W.HBox([self.subject, self.method, self.scan]),
            W.HBox([self.control_scale, self.guidance_scale, self.semantics]),
            self.status, self.panel, W.HTML("<b>Every method on this scan</b>"), self.methods_panel])
        self.draw()

    # ------------------------------------------------------------------ data
    def methods_of(self, subject: str) -> list[str]:
        """Methods with a reconstructor for ``subject``."""
        return sorted(m for m, s in self.reconstructors if s == subject)

    def test_data(self, method: str, subject: str) -> dict:
        """:func:`brainrecon.sampling.make_test_maps` of that reconstructor (cached)."""
        key = (method, subject)
        if key not in self._data:
            self._data[key] = make_test_maps(self.reconstructors[key], self.world, subject, self.n_test)
        return self._data[key]

    def _fill_subject(self) -> None:
        self._quiet = True
        try:
            methods = self.methods_of(self.subject.value)
            self.method.options = methods
            self.method.value = methods[0] if self.method.value not in methods else self.method.value
            data = self.test_data(self.method.value, self.subject.value)
            scans = [(f"scan {i}: {c[:34]}", i) for i, c in enumerate(data["captions"])]
            self.scan.options, self.scan.value = scans, 0
            self.semantics.options = [("its own", _OWN)] + [(f"scan {i}", i) for i in range(len(scans))]
            self.semantics.value = _OWN
        finally:
            self._quiet = False

    def _on_subject(self, change) -> None:
        self._fill_subject()
        self.draw()

    def _on_change(self, change) -> None:
        if not self._quiet:
            self.draw()

    # ------------------------------------------------------------------ drawing
    def _reconstruct(self, method: str) -> torch.Tensor:
        pipe = self.reconstructors[(method, self.subject.value)]
        data = self.test_data(method, self.subject.value)
        i, j = int(self.scan.value), int(self.semantics.value)
        kw = {} if j == _OWN else {"semantic_source": data["maps"][j:j + 1]}
        steps = self.steps or pipe.config.default_num_inference_steps
        return pipe(data["maps"][i:i + 1], control_scale=self.control_scale.value,
                    guidance_scale=self.guidance_scale.value, num_inference_steps=steps,
                    generator=[torch.Generator().manual_seed(self.seed + i)], **kw).images[0]

    def _settings(self) -> str:
        j = int(self.semantics.value)
        swap = "" if j == _OWN else f" · semantics of scan {j}"
        return f"α = {self.control_scale.value:g} · CFG = {self.guidance_scale.value:g}{swap}"

    def draw(self):
        """Redraw the main panel and the methods row for the current controls; return the main figure."""
        method, subject, i = self.method.value, self.subject.value, int(self.scan.value)
        data = self.test_data(method, subject)
        self.reconstruction = self._reconstruct(method)
        fig = Figure(figsize=(9.5, 3.0))
        ax_t, ax_r, ax_m = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.9]})
        ax_t.imshow(data["targets"][i].permute(1, 2, 0).numpy())
        ax_t.set_title("seen image", fontsize=9)
        ax_r.imshow(self.reconstruction.permute(1, 2, 0).clamp(0, 1).numpy())
        ax_r.set_title(f"{method}\n{self._settings()}", fontsize=8)
        for ax in (ax_t, ax_r):
            _strip(ax)
        self._plot_input(ax_m, self.reconstructors[(method, subject)], data["maps"][i], f"input: {subject}, scan {i}")
        fig.suptitle(data["captions"][i][:90], fontsize=8)
        self.figure = fig
        self.panel.value = figure_to_png(fig)
        self.status.value = f"{method} · {subject} · scan {i} · {self._settings()}"
        self.draw_methods()
        return fig

    @staticmethod
    def _plot_input(ax, pipe, scan, title: str) -> None:
        """The scan as the method reads it: a flatmap, or (voxel methods) the voxel vector as a grid."""
        if getattr(pipe.conditioner, "input_kind", "flatmap") == "flatmap":
            plot_flatmap(scan, pipe.make_projector(), ax=ax, colorbar=False, title=title)
            return
        v = scan.float().flatten().numpy()
        side = int(np.ceil(np.sqrt(len(v))))
        grid = np.full(side * side, np.nan)
        grid[:len(v)] = v
        lim = float(np.nanmax(np.abs(v))) or 1.0
        ax.imshow(grid.reshape(side, side), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{title} ({len(v)} voxels)", fontsize=9)
        _strip(ax)

    def draw_methods(self):
        """Redraw the methods row (the seen image, then every method on the current scan)."""
        subject, i = self.subject.value, int(self.scan.value)
        methods = self.methods_of(subject)
        self.row = {m: (self.reconstruction if m == self.method.value else self._reconstruct(m)) for m in methods}
        target = self.test_data(methods[0], subject)["targets"][i]
        fig = Figure(figsize=(1.9 * (len(methods) + 1), 2.3))
        axes = np.atleast_1d(fig.subplots(1, len(methods) + 1))
        axes[0].imshow(target.permute(1, 2, 0).numpy())
        axes[0].set_title("seen image", fontsize=8)
        for ax, m in zip(axes[1:], methods):
            ax.imshow(self.row[m].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_title(m, fontsize=8)
        for ax in axes:
            _strip(ax)
        self.methods_figure = fig
        self.methods_panel.value = figure_to_png(fig)
        return fig


def view_explorer(reconstructors=None, world=None, n_test: int = 12, seed: int = 0,
                  num_inference_steps: int | None = None, world_preset: str | None = None) -> ExplorerView:
    """The explorer page: pick subject, scan and method; drive α, CFG and the semantic swap.

    Parameters
    ----------
    reconstructors : list or dict, optional
        Reconstructor folders or loaded pipelines (``load_reconstructor`` output), as a list (each is
        keyed by its ``method`` and ``subject``) or a dict ``{(method, subject): pipeline}``. Default:
        the shipped toy NeuroPictor reconstructor.
    world : ToyWorld, optional
        Default the world the first reconstructor was trained on
        (:func:`brainrecon.sampling.demo.make_demo_world`).
    n_test : int
        Test scans offered per subject.
    seed : int
        Scan ``i`` always uses the generator ``seed + i`` (so moves compare like with like).
    num_inference_steps : int, optional
        Default each reconstructor's own.
    world_preset : {"default", "smoke"}, optional
        With ``world=None``: build this toy world instead of the reconstructor's own.

    Returns
    -------
    ExplorerView
    """
    if reconstructors is None:
        reconstructors = [None]
    if not isinstance(reconstructors, dict):
        quiet = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()            # no "Loading weights" bars on the page
        try:
            pipes = [r if hasattr(r, "make_projector") else load_reconstructor(r) for r in reconstructors]
        finally:
            if quiet:
                hf_logging.enable_progress_bar()
        reconstructors = {}
        for p in pipes:
            key = (str(p.info.get("method", "neuropictor")), str(p.info.get("subject", "subj01")))
            if key in reconstructors:
                raise InvalidInputError(f"two reconstructors for method {key[0]!r} and subject {key[1]!r}; "
                                        f"pass one per (method, subject).")
            reconstructors[key] = p
    if world is None:
        world = make_demo_world(next(iter(reconstructors.values())), world_preset, progress=False)
    return ExplorerView(reconstructors, world, n_test=n_test, seed=seed, num_inference_steps=num_inference_steps)
