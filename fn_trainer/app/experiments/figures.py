"""Figure pieces shared by the training experiments: one curve per run, coloured by
position; the train/validation accuracy figure and the gradient norm figure."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from ..plots import Curve, plot_curves
from .records import RunRecord

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
ACCURACY_YLIM = (0.0, 1.02)  # a little room above 1: a curve at 100% stays in view


def curves(records: Sequence[RunRecord], key: str, *, suffix: str = "", linestyle: str = "-",
           start: int = 0) -> List[Curve]:
    """One curve of ``logs[key]`` per record, labelled by its run, coloured by position."""
    return [Curve(f"{r.spec.label}{suffix}", r.curve(key), start, COLORS[i % len(COLORS)], linestyle, r.diverged)
            for i, r in enumerate(records)]


def accuracy_figure(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Train (dashed) and validation (solid) accuracy per epoch of every record."""
    return plot_curves(curves(records, "validation_accuracy", suffix=" — validation")
                       + curves(records, "train_accuracy", suffix=" — train", linestyle="--"),
                       path, title=title, ylabel="accuracy", ylim=ACCURACY_YLIM)


def gradient_figure(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """The gradient norm of each epoch's last minibatch (log scale) of every record."""
    return plot_curves(curves(records, "train_gradient_norm", start=1), path, title=title,
                       ylabel="gradient norm (log scale)", logy=True)
