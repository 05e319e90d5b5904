"""Interactive views for Jupyter (ipywidgets). Each ``view_*`` returns a widget.

The logic lives in public ``plot_*`` functions; widgets only wire controls to them, and
their callbacks are plain methods that tests drive directly. Every figure is shown as PNG bytes in
an ``ipywidgets.Image`` (:func:`brainrecon.figures.figure_to_png`), so it renders the same in
JupyterLab, Voilà and a saved notebook, whatever matplotlib backend is active; tests read the
image's bytes (:attr:`panel`) and the figure it was drawn from (:attr:`figure`).
"""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import torch

from .data.pairs import BrainImageDataset, make_toy_dataset
from .data.surface import plot_flatmap
from .errors import InvalidInputError
from .figures import Figure, figure_to_png
from .metrics import plot_reconstruction_grid
from .sampling.latent_opt import LATENT_INITS, optimise_latents
from .sampling.two_stage import plot_latent_optimisation

__all__ = ["FlatmapView", "view_flatmap", "ReconstructionView", "view_reconstruction", "FeatureGuidanceView",
           "view_feature_guidance", "LatentOptimisationView", "view_latent_optimisation"]


class FlatmapView(W.VBox):
    """Stimulus and brain flatmap of one item, with subject, image and ROI controls.

    Attributes
    ----------
    subject, image : ipywidgets.Dropdown, ipywidgets.IntSlider
        The subject and the row (image) of that subject shown.
    rois : ipywidgets.Checkbox
        Outline visual areas.
    figure : matplotlib.figure.Figure
        The figure last drawn.
    panel : ipywidgets.Image
        That figure as a PNG (what the page shows).
    """

    def __init__(self, dataset):
        if not isinstance(dataset, BrainImageDataset) or dataset.representation != "flatmap":
            raise InvalidInputError("view_flatmap needs a BrainImageDataset with "
                                    "representation='flatmap' (or a ToyWorld).")
        self.dataset = dataset
        self.subject = W.Dropdown(options=[(s, i) for i, s in enumerate(dataset.subjects)],
                                  value=0, description="subject")
        self.image = W.IntSlider(min=0, max=max(len(dataset.records[0]) - 1, 0), value=0,
                                 description="image", continuous_update=False)
        self.rois = W.Checkbox(value=True, description="visual areas")
        self.panel = W.Image(format="png")
        self.figure = None
        self.subject.observe(self._on_subject, names="value")
        self.image.observe(self._on_change, names="value")
        self.rois.observe(self._on_change, names="value")
        super().__init__([W.HBox([self.subject, self.image, self.rois]), self.panel])
        self.draw()

    @property
    def index(self) -> int:
        """Dataset index of the item shown."""
        return int(np.flatnonzero(self.dataset.subject_of_item == self.subject.value)[self.image.value])

    def _on_subject(self, change) -> None:
        self.image.max = max(len(self.dataset.records[change["new"]]) - 1, 0)
        self.image.value = min(self.image.value, self.image.max)
        self.draw()

    def _on_change(self, change) -> None:
        self.draw()

    def draw(self):
        """Redraw the figure for the current controls and return it."""
        item = self.dataset[self.index]
        fig = Figure(figsize=(10, 3.4))
        ax_img, ax_map = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.6]})
        ax_img.imshow(item["image"].permute(1, 2, 0).numpy())
        ax_img.set_title(item["caption"][:60] or f"image {item['image_key']}", fontsize=8)
        ax_img.axis("off")
        plot_flatmap(item["brain"], self.dataset.projector, rois=self.rois.value, ax=ax_map,
                     title=f"{self.dataset.subjects[item['subject']]}, image {item['image_key']} "
                           f"({item['n_repeats']} trial(s))")
        self.figure = fig
        self.panel.value = figure_to_png(fig)
        return fig


def view_flatmap(data, split: str = "test", resolution: int = 128) -> FlatmapView:
    """Browse stimuli and their flatmaps by subject and image.

    Parameters
    ----------
    data : ToyWorld or BrainImageDataset
        A toy world (shown through ``make_toy_dataset(world, split=split)``) or any
        flatmap dataset, e.g. ``make_nsd_dataset(load_nsd(..., space="fsaverage"))``.
    split : {"train", "test", "all"}
        For a toy world: which images to browse.
    resolution : int
        For a toy world: flatmap side in pixels.

    Returns
    -------
    FlatmapView
    """
    if not isinstance(data, BrainImageDataset):
        data = make_toy_dataset(data, split=split, resolution=resolution)
    return FlatmapView(data)


class ReconstructionView(W.VBox):
    """Live NeuroPictor reconstructions: control scale ``α`` (Eq. 7), CFG scale, semantic swap.

    Attributes
    ----------
    control_scale, guidance_scale : ipywidgets.FloatSlider
        ``α`` and the classifier-free guidance scale of the grid.
    layout_scan, semantic_scan : ipywidgets.Dropdown
        The swap: low-level features of ``layout_scan`` with the semantics of ``semantic_scan``.
    images : Tensor ``(n, 3, H, W)``
        The grid's current reconstructions; :attr:`swap_image` ``(3, H, W)`` the swap's.
    figure, swap_figure : matplotlib.figure.Figure
        The grid (targets over reconstructions) and the swap panel (input flatmap of the layout
        scan, the semantic source's target, the swap).
    panel, swap_panel : ipywidgets.Image
        Those figures as PNGs (what the page shows).
    status : ipywidgets.Label
        The settings the grid was drawn with, e.g. ``α = 0.5 · CFG = 5 · 25 steps``.
    """

    def __init__(self, pipe, maps, targets=None, captions=None, n: int = 4, seed: int = 0,
                 num_inference_steps: int | None = None, max_control_scale: float = 2.0):
        if isinstance(maps, dict):  # make_test_maps(...) output
            targets = maps.get("targets") if targets is None else targets
            captions = maps.get("captions") if captions is None else captions
            maps = maps["maps"]
        maps = torch.as_tensor(maps).float()
        if maps.ndim != 4 or len(maps) < 1:
            raise InvalidInputError(f"view_reconstruction needs flatmaps (N, 1, H, W); got {tuple(maps.shape)}.")
        self.pipe, self.maps, self.seed = pipe, maps, int(seed)
        self.targets = None if targets is None else torch.as_tensor(targets).float()
        self.captions = captions
        self.n = min(int(n), len(maps))
        self.steps = num_inference_steps or pipe.config.default_num_inference_steps
        self.projector = pipe.make_projector()
        pipe.set_progress_bar_config(disable=True)
        gs = float(pipe.config.default_guidance_scale)
        self.control_scale = W.FloatSlider(value=1.0, min=0.0, max=max_control_scale, step=0.05,
                                           description="α", continuous_update=False)
        self.guidance_scale = W.FloatSlider(value=gs, min=0.0, max=max(10.0, 2 * gs), step=0.5,
                                            description="CFG", continuous_update=False)
        scans = [(f"scan {i}" + (f": {captions[i][:30]}" if captions else ""), i) for i in range(len(maps))]
        self.layout_scan = W.Dropdown(options=scans, value=0, description="layout")
        self.semantic_scan = W.Dropdown(options=scans, value=min(1, len(maps) - 1), description="semantics")
        self.panel, self.swap_panel = W.Image(format="png"), W.Image(format="png")
        self.status = W.Label()
        self.images = self.swap_image = self.figure = self.swap_figure = None
        for w in (self.control_scale, self.guidance_scale):
            w.observe(self._on_sampling, names="value")
        for w in (self.layout_scan, self.semantic_scan):
            w.observe(self._on_swap, names="value")
        super().__init__([W.HBox([self.control_scale, self.guidance_scale, self.status]), self.panel,
                          W.HBox([self.layout_scan, self.semantic_scan]), self.swap_panel])
        self.draw()

    def _sample(self, maps, index, **kw):
        gens = [torch.Generator().manual_seed(self.seed + int(i)) for i in index]
        return self.pipe(maps, control_scale=self.control_scale.value, guidance_scale=self.guidance_scale.value,
                         num_inference_steps=self.steps, generator=gens, **kw).images

    def _on_sampling(self, change) -> None:
        self.draw()

    def _on_swap(self, change) -> None:
        self.draw_swap()

    def draw(self):
        """Resample the grid (and the swap) for the current sliders; return the grid figure."""
        self.images = self._sample(self.maps[:self.n], range(self.n))
        targets = self.targets[:self.n] if self.targets is not None else self.images * 0
        fig = plot_reconstruction_grid({f"α={self.control_scale.value:g}, CFG={self.guidance_scale.value:g}":
                                        self.images}, targets, n=self.n, titles=self.captions)
        self.figure = fig
        self.panel.value = figure_to_png(fig)
        self.status.value = (f"α = {self.control_scale.value:g} · CFG = {self.guidance_scale.value:g} · "
                             f"{self.steps} steps")
        self.draw_swap()
        return fig

    def draw_swap(self):
        """Redraw the swap panel for the current pickers; return its figure."""
        i, j = self.layout_scan.value, self.semantic_scan.value
        self.swap_image = self._sample(self.maps[i:i + 1], [i], semantic_source=self.maps[j:j + 1])[0]
        fig = Figure(figsize=(10, 2.8))
        ax_map, ax_src, ax_out = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2.2, 1, 1]})
        plot_flatmap(self.maps[i], self.projector, ax=ax_map, colorbar=False, title=f"input: scan {i} (layout)")
        if self.targets is not None:
            ax_src.imshow(self.targets[j].permute(1, 2, 0).numpy())
        ax_src.set_title(f"scan {j} (semantics)", fontsize=8)
        ax_out.imshow(self.swap_image.permute(1, 2, 0).numpy())
        ax_out.set_title(f"layout {i} + semantics {j}", fontsize=8)
        for ax in (ax_src, ax_out):
            ax.set_xticks([])
            ax.set_yticks([])
        self.swap_figure = fig
        self.swap_panel.value = figure_to_png(fig)
        return fig


def view_reconstruction(pipe, maps, targets=None, captions=None, n: int = 4, seed: int = 0,
                        num_inference_steps: int | None = None) -> ReconstructionView:
    """Explore a reconstructor: α slider (NeuroPictor Eq. 7), CFG slider, semantic-swap picker, input flatmap.

    Parameters
    ----------
    pipe : BrainToImagePipeline
    maps : Tensor ``(N, 1, H, W)`` or dict
        Flatmaps of test scans, or the output of :func:`brainrecon.sampling.make_test_maps`
        (then targets and captions come with it).
    targets : array ``(N, 3, S, S)``, optional
        The seen images (shown above the reconstructions).
    captions : list of str, optional
    n : int
        Scans in the live grid.
    seed : int
        Scan ``i`` always uses the generator ``seed + i`` (so slider moves compare like with like).
    num_inference_steps : int, optional
        Default the reconstructor's.

    Returns
    -------
    ReconstructionView
    """
    return ReconstructionView(pipe, maps, targets=targets, captions=captions, n=n, seed=seed,
                              num_inference_steps=num_inference_steps)


class FeatureGuidanceView(W.VBox):
    """Live feature-guided reconstructions from voxels: guidance scale κ (log slider) and strength η.

    NeuralDiffuser's Algorithm 1 through :class:`~brainrecon.sampling.BrainToImagePipeline`: img2img from
    the decoded latent at ``strength``, and for the first share η of the steps run the gradient of Eq. 14.

    Attributes
    ----------
    kappa : ipywidgets.FloatLogSlider
        ``feature_guidance_scale`` κ (the grid's row "κ = …"; κ = 0 is the row "unguided").
    eta : ipywidgets.FloatSlider
        ``feature_guidance_strength`` η.
    images, unguided : Tensor ``(n, 3, H, W)``
        The grid's guided and unguided reconstructions (same seeds).
    guided_steps : int
        How many of the steps run the current η guides (shown in :attr:`status`).
    sweep_images : dict
        ``{(κ, η): Tensor}`` of the last :meth:`draw_sweep` (button "κ × η sweep").
    figure, sweep_figure : matplotlib.figure.Figure;  panel, sweep_panel : ipywidgets.Image
    status : ipywidgets.Label
    """

    def __init__(self, pipe, voxels, targets=None, captions=None, n: int = 4, seed: int = 0,
                 num_inference_steps: int | None = None, strength: float = 0.75, kappa: float = 1e-3,
                 kappa_range=(-6, 0), sweep_kappas=None, sweep_etas=(0.2, 0.5, 1.0)):
        voxels = torch.as_tensor(voxels).float()
        if voxels.ndim != 2 or len(voxels) < 1:
            raise InvalidInputError(f"view_feature_guidance needs voxel vectors (N, V); got {tuple(voxels.shape)}.")
        self.pipe, self.voxels, self.seed, self.strength = pipe, voxels, int(seed), float(strength)
        self.targets = None if targets is None else torch.as_tensor(targets).float()
        self.captions = captions
        self.n = min(int(n), len(voxels))
        self.steps = num_inference_steps or pipe.config.default_num_inference_steps
        pipe.set_progress_bar_config(disable=True)
        lo, hi = kappa_range
        self.kappa = W.FloatLogSlider(value=kappa, base=10, min=lo, max=hi, step=0.25, description="κ",
                                      continuous_update=False)
        self.eta = W.FloatSlider(value=0.2, min=0.0, max=1.0, step=0.05, description="η", continuous_update=False)
        self.sweep_kappas = tuple(sweep_kappas or (0.0, kappa, 10 * kappa))
        self.sweep_etas = tuple(sweep_etas)
        self.sweep_button = W.Button(description="κ × η sweep")
        self.panel, self.sweep_panel, self.status = W.Image(format="png"), W.Image(format="png"), W.Label()
        self.images = self.unguided = self.figure = self.sweep_figure = None
        self.sweep_images = {}
        for w in (self.kappa, self.eta):
            w.observe(self._on_change, names="value")
        self.sweep_button.on_click(lambda _: self.draw_sweep())
        super().__init__([W.HBox([self.kappa, self.eta, self.status]), self.panel, self.sweep_button,
                          self.sweep_panel])
        self.unguided = self._sample(0.0, 0.0)
        self.draw()

    @property
    def guided_steps(self) -> int:
        run = min(self.steps, int(round(self.steps * self.strength)))
        return int(run * self.eta.value) if self.kappa.value > 0 else 0

    def _sample(self, kappa, eta):
        gens = [torch.Generator().manual_seed(self.seed + i) for i in range(self.n)]
        return self.pipe(self.voxels[:self.n], strength=self.strength, num_inference_steps=self.steps,
                         generator=gens, feature_guidance_scale=float(kappa),
                         feature_guidance_strength=float(eta)).images

    def _on_change(self, change) -> None:
        self.draw()

    def _grid(self, rows: dict):
        first = next(iter(rows.values()))
        targets = self.targets[:self.n] if self.targets is not None else first * 0
        return plot_reconstruction_grid(rows, targets, n=self.n, titles=self.captions)

    def draw(self):
        """Resample the guided row for the current κ, η (the unguided row stays); return the figure."""
        k, e = self.kappa.value, self.eta.value
        self.images = self._sample(k, e)
        self.figure = self._grid({"unguided": self.unguided, f"κ = {k:.2g}, η = {e:g}": self.images})
        self.panel.value = figure_to_png(self.figure)
        self.status.value = (f"κ = {k:.2g} · η = {e:g} · {self.guided_steps} of "
                             f"{min(self.steps, int(round(self.steps * self.strength)))} steps guided")
        return self.figure

    def draw_sweep(self):
        """One row per (κ, η) of :attr:`sweep_kappas` × :attr:`sweep_etas` (κ = 0 once); return the figure."""
        self.sweep_images = {}
        for k in self.sweep_kappas:
            for e in (self.sweep_etas if k > 0 else self.sweep_etas[:1]):
                self.sweep_images[(k, e)] = self._sample(k, e)
        rows = {("unguided" if k == 0 else f"κ={k:.2g}, η={e:g}"): v for (k, e), v in self.sweep_images.items()}
        self.sweep_figure = self._grid(rows)
        self.sweep_panel.value = figure_to_png(self.sweep_figure)
        return self.sweep_figure


def view_feature_guidance(pipe, voxels, targets=None, captions=None, n: int = 4, seed: int = 0,
                          num_inference_steps: int | None = None, strength: float = 0.75,
                          kappa: float = 1e-3) -> FeatureGuidanceView:
    """Explore feature guidance (NeuralDiffuser §4.3): κ on a log slider, η, a κ × η sweep grid.

    Parameters
    ----------
    pipe : BrainToImagePipeline
        A reconstructor whose conditioner has feature targets and its backbone attached (NeuralDiffuser:
        ``load_reconstructor`` attaches it; a pipeline built by hand needs
        ``pipe.conditioner.attach_backbone(backbone)``).
    voxels : Tensor ``(N, V)``
        Test scans of the conditioner's subject.
    targets : array ``(N, 3, S, S)``, optional
        The seen images (the grid's top row).
    captions : list of str, optional
    n, seed, num_inference_steps
        Scans in the grid; scan ``i`` uses generator ``seed + i``; steps (default the reconstructor's).
    strength : float
        img2img strength (Algorithm 1 starts from the decoded latent; the paper's 0.75).
    kappa : float
        Starting κ.

    Returns
    -------
    FeatureGuidanceView
    """
    return FeatureGuidanceView(pipe, voxels, targets=targets, captions=captions, n=n, seed=seed,
                               num_inference_steps=num_inference_steps, strength=strength, kappa=kappa)


class LatentOptimisationView(W.VBox):
    """Step through MindDiffuser's stage 2 (Eq. 5): the images and the feature loss at each iteration.

    Runs :func:`~brainrecon.sampling.latent_opt.optimise_latents` once on the first ``n`` scans, keeping
    every iteration's images; the ``iteration`` slider then shows any of them without recomputing
    (0 is stage 1). "optimise" runs it again with the chosen number of iterations and ``z``'s start
    (the decoded latent, or Gaussian noise: the paper's ablation).

    Attributes
    ----------
    iteration : ipywidgets.IntSlider
        The iteration shown (0 = stage 1).
    iterations : ipywidgets.BoundedIntText
        Iterations of the next run.
    init : ipywidgets.Dropdown
        ``z``'s start of the next run (:data:`~brainrecon.sampling.latent_opt.LATENT_INITS`).
    run_button : ipywidgets.Button
    result : LatentOptimisationOutput
        The last run (``snapshots`` holds every iteration's images, ``losses`` Eq. 5's loss).
    figure : matplotlib.figure.Figure;  panel : ipywidgets.Image
    status : ipywidgets.Label
        The iteration, its mean loss against stage 1's, and the run's start.
    """

    def __init__(self, pipe, voxels, targets=None, captions=None, n: int = 4, iterations: int = 10,
                 lr: float = 0.01, seed: int = 0, num_inference_steps: int | None = None, strength=None,
                 max_iterations: int = 300):
        voxels = torch.as_tensor(voxels).float()
        if voxels.ndim != 2 or len(voxels) < 1:
            raise InvalidInputError(f"view_latent_optimisation needs voxel vectors (N, V); got "
                                    f"{tuple(voxels.shape)}.")
        self.pipe, self.voxels, self.lr, self.seed = pipe, voxels, float(lr), int(seed)
        self.n = min(int(n), len(voxels))
        self.targets = None if targets is None else torch.as_tensor(targets).float()[:self.n]
        self.captions = None if captions is None else list(captions)[:self.n]
        self.sampling = {"num_inference_steps": num_inference_steps, "strength": strength}
        self.iteration = W.IntSlider(value=0, min=0, max=0, description="iteration", continuous_update=False)
        self.iterations = W.BoundedIntText(value=int(iterations), min=0, max=int(max_iterations),
                                           description="iterations")
        self.init = W.Dropdown(options=list(LATENT_INITS), value="decoded", description="z from")
        self.run_button = W.Button(description="optimise")
        self.panel, self.status = W.Image(format="png"), W.Label()
        self.result = self.figure = None
        self.iteration.observe(lambda _: self.draw(), names="value")
        self.run_button.on_click(lambda _: self.optimise())
        super().__init__([W.HBox([self.iterations, self.init, self.run_button]), W.HBox([self.iteration, self.status]),
                          self.panel])
        self.optimise()

    def optimise(self):
        """Run stage 2 with the current ``iterations`` and ``init``; show its last iteration."""
        its = int(self.iterations.value)
        self.status.value = f"optimising {self.n} scans for {its} iterations..."

        def tell(i, state):
            self.status.value = f"iteration {i} of {its} · loss {float(state['loss'].mean()):.4g}"

        gens = [torch.Generator().manual_seed(self.seed + i) for i in range(self.n)]
        self.result = optimise_latents(self.pipe, self.voxels[:self.n], iterations=its, lr=self.lr,
                                       init=self.init.value, generator=gens, record_every=1, callback=tell,
                                       progress=False, **self.sampling)
        with self.iteration.hold_trait_notifications():
            self.iteration.max = its
            self.iteration.value = its
        return self.draw()

    def draw(self):
        """Show the images and the loss at the slider's iteration; return the figure."""
        it = min(int(self.iteration.value), len(self.result.losses) - 1)
        self.figure = plot_latent_optimisation(self.result, it, targets=self.targets, captions=self.captions,
                                               n=self.n)
        self.panel.value = figure_to_png(self.figure)
        L = self.result.losses.float().mean(1)
        self.status.value = (f"iteration {it} of {len(L) - 1} · loss {float(L[0]):.4g} → {float(L[it]):.4g} · "
                             f"z from {'the decoded latent' if self.init.value == 'decoded' else 'noise'}")
        return self.figure


def view_latent_optimisation(pipe, voxels, targets=None, captions=None, n: int = 4, iterations: int = 10,
                             lr: float = 0.01, seed: int = 0, num_inference_steps: int | None = None,
                             strength=None) -> LatentOptimisationView:
    """Step through MindDiffuser's stage-2 iterations: the images and Eq. 5's feature loss.

    Parameters
    ----------
    pipe : BrainToImagePipeline
        A MindDiffuser reconstructor (``load_reconstructor`` attaches its backbone).
    voxels : Tensor ``(N, V)``
        Test scans of the reconstructor's subject.
    targets : array ``(N, 3, S, S)``, optional
        The seen images (the figure's top row).
    captions : list of str, optional
    n : int
        Scans optimised and shown.
    iterations, lr : int, float
        Stage 2's first run (the ``iterations`` box and "optimise" run it again).
    seed : int
        Scan ``i`` draws its fixed noise from ``seed + i``.
    num_inference_steps, strength : optional
        Sampling settings (default the reconstructor's and the conditioner's).

    Returns
    -------
    LatentOptimisationView
    """
    return LatentOptimisationView(pipe, voxels, targets=targets, captions=captions, n=n, iterations=iterations,
                                  lr=lr, seed=seed, num_inference_steps=num_inference_steps, strength=strength)
