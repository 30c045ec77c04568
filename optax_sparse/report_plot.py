"""A figure of a sparse model: per-layer density and each mask's connectivity image.

Needs matplotlib (the ``examples`` extra); it is imported when :func:`plot_report` runs, never
when the package is imported.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np

from optax_sparse import report as report_lib

__all__ = ["plot_report"]


def plot_report(
    params: Any,
    opt_state: Any = None,
    *,
    path: str | pathlib.Path | None = None,
    resolution: int = 32,
    title: str | None = None,
    max_layers: int = 8,
) -> Any:
  """Draws per-layer density and the connectivity image of every kernel (ndim >= 2).

  The left panel is the density of each kernel (nonzeros / size, and the mask's density where
  ``opt_state`` holds masks); one panel per kernel shows
  :func:`~optax_sparse.report.connectivity_image` of its pattern (the mask, else
  ``params != 0``): rows are inputs, columns outputs, both ordered by decreasing degree, each
  pixel the density of a block (the empirical graphon). A flat image is a random-like mask; a
  bright corner means pruning kept a dense core of high-degree neurons.

  Args:
    params: the parameters.
    opt_state: an optimizer state holding masks (optional).
    path: write the figure there (PNG by the suffix) when given.
    resolution: blocks per side of each connectivity image.
    title: the figure's title.
    max_layers: draw the images of at most this many kernels (the first ones).

  Returns:
    The ``matplotlib.figure.Figure`` (closed after saving when ``path`` is given).

  Raises:
    ValueError: when ``params`` has no leaf with at least two dimensions.
  """
  import matplotlib  # noqa: PLC0415 - optional dependency, imported on use

  if path is not None:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  masks = report_lib._masks_of(opt_state) if opt_state is not None else None  # noqa: SLF001
  treedef = jax.tree.structure(params)
  mask_leaves = (treedef.flatten_up_to(masks) if masks is not None else [None] * len(flat))
  layers = []
  for (p, x), m in zip(flat, mask_leaves, strict=True):
    x = np.asarray(x)
    if x.ndim >= 2:
      pattern = np.asarray(m, bool) if m is not None else x != 0
      layers.append((report_lib.path_name(p), float(np.mean(x != 0)),
                     None if m is None else float(pattern.mean()), pattern))
  if not layers:
    raise ValueError("plot_report needs at least one parameter leaf with ndim >= 2.")
  shown = layers[:max_layers]
  fig, axes = plt.subplots(1, 1 + len(shown), figsize=(3.2 * (1 + len(shown)), 3.4),
                           squeeze=False)
  ax = axes[0, 0]
  xs = np.arange(len(layers))
  ax.bar(xs, [d for _, d, _, _ in layers], 0.6, label="nonzeros")
  if any(md is not None for _, _, md, _ in layers):
    ax.scatter(xs, [np.nan if md is None else md for _, _, md, _ in layers], color="k",
               marker="_", s=300, label="mask")
    ax.legend(fontsize=7)
  ax.set_xticks(xs)
  ax.set_xticklabels([n for n, _, _, _ in layers], rotation=45, ha="right", fontsize=7)
  ax.set(ylabel="density", ylim=(0, 1.05), title="density per layer")
  for ax, (name, density, _, pattern) in zip(axes[0, 1:], shown, strict=True):
    image = report_lib.connectivity_image(pattern, resolution)
    ax.imshow(image, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
              interpolation="nearest")
    ax.set_title(f"{name}\ndensity {density:.1%}", fontsize=8)
    ax.set_xlabel("outputs by degree", fontsize=7)
    ax.set_ylabel("inputs by degree", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
  return fig
