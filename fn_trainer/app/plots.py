"""Report figures (matplotlib, Agg backend): per-epoch curves and 2-D maps, saved as PNG."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.paths import write_figure  # noqa: E402

FIGSIZE = (7.5, 4.8)
DPI = 120
BAND_ALPHA = 0.2  # a band is shaded lightly: the lines stay readable where bands overlap


@dataclass(frozen=True)
class Curve:
    """One line of a figure. ``values[i]`` is plotted at ``x = start + i``; ``None`` or
    non-finite entries are missing. ``diverged`` (a short note: "diverged", "1 of 3 seeds
    diverged") ends the line with an ``X`` and follows the label in the legend. ``band =
    (low, high)``, two sequences like ``values``: a shaded band in the line's colour
    between them (e.g. the spread over seeds around their mean), drawn where both are
    finite. ``marker``: one at every point (a lone point gets a dot anyway)."""

    label: str
    values: Sequence[Optional[float]]
    start: int = 0
    color: Optional[str] = None
    linestyle: str = "-"
    diverged: Optional[str] = None
    band: Optional[Tuple[Sequence[Optional[float]], Sequence[Optional[float]]]] = None
    marker: Optional[str] = None

    def __post_init__(self):
        if self.band is not None and (len(self.band) != 2 or len(self.band[0]) != len(self.band[1])):
            raise ValueError(f"curve {self.label!r}: band must be (low, high), two sequences of equal length")


def _is_finite(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(v)


def _finite(values: Sequence[Optional[float]], start: int) -> Tuple[np.ndarray, np.ndarray]:
    xs = [start + i for i, v in enumerate(values) if _is_finite(v)]
    ys = [v for v in values if _is_finite(v)]
    return np.asarray(xs), np.asarray(ys, dtype=float)


def _draw_band(ax, band: Tuple[Sequence[Optional[float]], Sequence[Optional[float]]], start: int,
               color: str) -> None:
    """Shade between ``band``'s low and high values where both are finite (gaps elsewhere)."""
    low, high = band
    lows, highs = ([v if _is_finite(v) else np.nan for v in side] for side in (low, high))
    where = np.isfinite(lows) & np.isfinite(highs)
    if not where.any():  # matplotlib would give the axes an empty extent, which a log scale refuses
        return
    ax.fill_between(np.arange(start, start + len(low)), lows, highs,
                    where=where, color=color, alpha=BAND_ALPHA, linewidth=0)


def plot_curves(curves: Sequence[Curve], path: Path, *, title: str, ylabel: str,
                xlabel: str = "epoch", logy: bool = False,
                ylim: Optional[Tuple[float, float]] = None) -> Path:
    """Save a line plot of ``curves`` to ``path`` (PNG) and return ``path``.

    A diverged curve is drawn up to its last finite value and ends with an ``X``
    marker; its legend entry gives its ``diverged`` note. A curve with no finite value at all is
    listed in the legend only. ``logy``: a log scale, said in the y label; where a value
    is 0 (a gradient norm can be), a symmetric log scale, linear below the smallest
    positive value, so that 0 is drawn; with no positive value anywhere, a linear scale. A
    curve's ``band`` is shaded in its colour; what a band shows is for the title or the
    labels to say.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one curve")
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    finite: List[np.ndarray] = []  # a log scale needs a value above 0 (every run may have diverged at once)
    for c in curves:
        xs, ys = _finite(c.values, c.start)
        finite += [ys, *(_finite(side, c.start)[1] for side in (c.band or ()))]
        label = f"{c.label} — {c.diverged}" if c.diverged else c.label
        (line,) = ax.plot(xs, ys, linestyle=c.linestyle, color=c.color, label=label,
                          marker=c.marker or ("o" if len(xs) == 1 else None))
        if c.band is not None:
            _draw_band(ax, c.band, c.start, line.get_color())
        if c.diverged and len(xs):
            ax.plot(xs[-1:], ys[-1:], marker="X", markersize=11, color=line.get_color(),
                    markeredgecolor="black", linestyle="none")
    values = np.concatenate(finite)
    if logy and (values > 0).any():
        lowest = float(values[values > 0].min())
        if (values <= 0).any():
            ax.set_yscale("symlog", linthresh=lowest)
            ylabel = f"{ylabel} (log scale; linear below {lowest:.2g}, where 0 is drawn)"
        else:
            ax.set_yscale("log")
            ylabel = f"{ylabel} (log scale)"
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    # Below the axes: a legend inside would hide the curves it names.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13),
              ncol=2 if len(curves) > 3 else 1, frameon=False)
    return _save(fig, path)


def plot_map(array: np.ndarray, path: Path, *, title: str, colorbar_label: str,
             cmap: str = "viridis", box: Optional[int] = None,
             vmin: Optional[float] = None, vmax: Optional[float] = None) -> Path:
    """Save a 2-D ``array`` as an image with a colour bar; ``box``: draw the interior
    region ``[box, n - box)`` as a dashed rectangle. Returns ``path``."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"array must be 2-D, got shape {array.shape}")
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=DPI)
    im = ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=colorbar_label)
    if box:
        h, w = array.shape
        ax.add_patch(matplotlib.patches.Rectangle(
            (box - 0.5, box - 0.5), w - 2 * box, h - 2 * box, fill=False, edgecolor="red",
            linestyle="--", linewidth=1.2, label=f"interior ({box} px from the borders)"))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small", frameon=False)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("column (pixel)")
    ax.set_ylabel("row (pixel)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    try:
        write_figure(path, fig, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
