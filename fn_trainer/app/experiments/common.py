"""Figure and report pieces shared by the training experiments."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ..plots import Curve, plot_curves
from ..report import markdown_table
from ..solve import TOLERANCE, reference_budget
from .architectures import Architecture
from .context import Context
from .records import RunRecord
from .training import execute

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def curves(records: Sequence[RunRecord], key: str, *, suffix: str = "", linestyle: str = "-",
           start: int = 0, labels: Optional[Sequence[str]] = None) -> List[Curve]:
    """One curve of ``logs[key]`` per record, coloured by position."""
    labels = labels or [r.spec.label for r in records]
    return [Curve(f"{label}{suffix}", r.curve(key), start, COLORS[i % len(COLORS)], linestyle, r.diverged)
            for i, (r, label) in enumerate(zip(records, labels))]


def train_normalised(ctx: Context, archs: Sequence[Architecture], batch_size: int) -> List[RunRecord]:
    """One run per architecture, as the homework Trainer's defaults have it: normalised
    inputs, ``--lr``, ``--epochs`` and ``--seed``; stored runs are reused."""
    s = ctx.settings
    return execute(ctx, [a.spec(lr=s.lr, normalization=True, batch_size=batch_size, epochs=s.epochs,
                                seed=s.seed) for a in archs])


def accuracy_figure(records: Sequence[RunRecord], path: Path, title: str) -> Path:
    """Train (dashed) and validation (solid) accuracy per epoch of every record."""
    return plot_curves(curves(records, "validation_accuracy", suffix=" — validation")
                       + curves(records, "train_accuracy", suffix=" — train", linestyle="--"),
                       path, title=title, ylabel="accuracy", ylim=(0.0, 1.02))


def header(title: str, ctx: Context) -> List[str]:
    s = ctx.settings
    limit = "all" if s.limit is None else f"the first {s.limit}"
    return [f"## {title}", "", f"Command: `{s.command}`", "",
            f"Training samples: {limit} ({len(ctx.splits.train.y):,}); validation samples: "
            f"{len(ctx.splits.valid.y):,}; seed {s.seed}; Adam, ReLU.", ""]


def params_table(archs: Sequence[Architecture]) -> str:
    """Parameter count of each network and its difference to the reference MLP."""
    budget = reference_budget()
    rows = [[a.title, a.network_type, f"{a.n_params:,}", f"{a.difference:+,}",
             "yes" if abs(a.difference) <= TOLERANCE else "no", a.solved] for a in archs]
    return (f"Reference: MLP 256-256, {budget:,} parameters; \"about the same\" means within "
            f"{TOLERANCE:,}.\n\n" + markdown_table(
                ["network", "type", "parameters", "difference to reference", f"within {TOLERANCE:,}", "size"],
                rows))
