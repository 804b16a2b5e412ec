"""Question 3: the reference MLP against a deep 64-unit MLP with about as many parameters."""
from __future__ import annotations

from typing import List

from ..plots import plot_curves
from ..report import image, write_section
from .architectures import deep_mlp, reference_mlp
from .common import accuracy_figure, curves, header, params_table, train_normalised
from .context import Context
from .formatting import fmt_lr, runs_table
from .records import RunRecord

NAME = "depth"
BATCH_SIZE = 128


def run(ctx: Context) -> List[RunRecord]:
    """Train both MLPs (the homework Trainer's defaults: normalised, ``--lr``)."""
    s = ctx.settings
    archs = [reference_mlp(), deep_mlp(64)]
    batch_size = s.batch_size or BATCH_SIZE
    folder = ctx.folder(NAME)
    records = train_normalised(ctx, archs, batch_size)
    setting = f"lr={fmt_lr(s.lr)}, normalised, batch {batch_size}"
    acc = accuracy_figure(records, folder / "accuracy.png", f"Accuracy: MLP 256-256 against a deep 64-unit MLP\n{setting}")
    grad = plot_curves(curves(records, "train_gradient_norm", start=1), folder / "gradient_norm.png",
                       title=f"Gradient norm of each epoch's last minibatch\n{setting}",
                       ylabel="gradient norm (log scale)", logy=True)
    parts = header("3. Depth: MLP 256-256 against a deep 64-unit MLP", ctx) + [
        params_table(archs), "", runs_table(records), "",
        image(NAME, acc.name, "train and validation accuracy"), "",
        image(NAME, grad.name, "gradient norm"),
    ]
    write_section(ctx.out, NAME, "\n".join(parts), ctx.warn)
    return records
