"""Interactive views for Jupyter (ipywidgets). Each ``view_*`` returns a widget.

The logic lives in public ``plot_*`` functions; widgets only wire controls to them, and
their callbacks are plain methods that tests drive directly (widget output is not
captured outside a kernel, so tests look at :attr:`figure` instead).
"""
from __future__ import annotations

import ipywidgets as W
import numpy as np

__all__ = ["FlatmapView", "view_flatmap"]


class FlatmapView(W.VBox):
    """Stimulus and brain flatmap of one item, with subject, image and ROI controls.

    Attributes
    ----------
    subject, image : ipywidgets.Dropdown, ipywidgets.IntSlider
        The subject and the row (image) of that subject shown.
    rois : ipywidgets.Checkbox
        Outline visual areas.
    figure : matplotlib.figure.Figure
        The figure last drawn (what the output area shows).
    """

    def __init__(self, dataset):
        from .data.pairs import BrainImageDataset
        from .errors import InvalidInputError

        if not isinstance(dataset, BrainImageDataset) or dataset.representation != "flatmap":
            raise InvalidInputError("view_flatmap needs a BrainImageDataset with "
                                    "representation='flatmap' (or a ToyWorld).")
        self.dataset = dataset
        self.subject = W.Dropdown(options=[(s, i) for i, s in enumerate(dataset.subjects)],
                                  value=0, description="subject")
        self.image = W.IntSlider(min=0, max=max(len(dataset.records[0]) - 1, 0), value=0,
                                 description="image", continuous_update=False)
        self.rois = W.Checkbox(value=True, description="visual areas")
        self.output = W.Output()
        self.figure = None
        self.subject.observe(self._on_subject, names="value")
        self.image.observe(self._on_change, names="value")
        self.rois.observe(self._on_change, names="value")
        super().__init__([W.HBox([self.subject, self.image, self.rois]), self.output])
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
        from matplotlib.figure import Figure

        from .data.surface import plot_flatmap

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
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display

            display(fig)
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
    from .data.pairs import BrainImageDataset, make_toy_dataset

    if not isinstance(data, BrainImageDataset):
        data = make_toy_dataset(data, split=split, resolution=resolution)
    return FlatmapView(data)
