"""Figure pieces shared by the training experiments: one curve per configuration (the mean
over its seeds, with their min–max band), coloured by position; the train/validation
accuracy figure and the gradient norm figure."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from ..plots import Curve, plot_curves
from .configurations import Configuration

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")
MARKERS = (None, "o", "s", "^", "v", "D")  # after every colour, the next marker: 60 curves look different
ACCURACY_YLIM = (0.0, 1.02)  # a little room above 1: a curve at 100% stays in view


def curves(configurations: Sequence[Configuration], key: str, *, suffix: str = "", linestyle: str = "-",
           start: int = 0) -> List[Curve]:
    """One curve of ``logs[key]`` per configuration, labelled by its runs, coloured (and,
    past the tenth, marked) by position: a run's own curve, or with several seeds their
    mean and min–max band; a diverged seed ends the curve, and its legend says how many."""
    return [Curve(f"{c.spec.label}{suffix}", c.mean_curve(key), start, COLORS[i % len(COLORS)], linestyle,
                  c.diverged_note, c.band(key), MARKERS[i // len(COLORS) % len(MARKERS)])
            for i, c in enumerate(configurations)]


def seeds_note(configurations: Sequence[Configuration]) -> str:
    """What a figure's curves and bands show (a title's last line), ``""`` for single runs."""
    counts = sorted({len(c.runs) for c in configurations})
    if counts == [1]:
        return ""
    seeds = " or ".join(str(n) for n in counts)
    return f"\nmean over {seeds} seeds; bands: min–max over the seeds"


def accuracy_figure(configurations: Sequence[Configuration], path: Path, title: str) -> Path:
    """Train (dashed) and validation (solid) accuracy per epoch of every configuration."""
    return plot_curves(curves(configurations, "validation_accuracy", suffix=" — validation")
                       + curves(configurations, "train_accuracy", suffix=" — train", linestyle="--"),
                       path, title=title + seeds_note(configurations), ylabel="accuracy", ylim=ACCURACY_YLIM)


def gradient_figure(configurations: Sequence[Configuration], path: Path, title: str) -> Path:
    """The gradient norm of each epoch's last minibatch (log scale) of every configuration."""
    return plot_curves(curves(configurations, "train_gradient_norm", start=1), path,
                       title=title + seeds_note(configurations), ylabel="gradient norm", logy=True)
