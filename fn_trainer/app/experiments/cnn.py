"""Question 4: a CNN with filters (16, 32, 45) and a solved kernel size against the MLP."""
from __future__ import annotations

from typing import List

from ..report import image, write_section
from .architectures import kernel_cnn, reference_mlp
from .common import accuracy_figure, header, params_table, train_normalised
from .context import Context
from .formatting import fmt_lr, runs_table
from .records import RunRecord

NAME = "cnn"
BATCH_SIZE = 128


def run(ctx: Context) -> List[RunRecord]:
    """Train the CNN and the reference MLP (normalised, ``--lr``)."""
    s = ctx.settings
    archs = [kernel_cnn(), reference_mlp()]
    batch_size = s.batch_size or BATCH_SIZE
    records = train_normalised(ctx, archs, batch_size)
    acc = accuracy_figure(records, ctx.folder(NAME) / "accuracy.png",
                          f"Accuracy: CNN against MLP\nlr={fmt_lr(s.lr)}, normalised, batch {batch_size}")
    parts = header("4. CNN with a solved kernel size against the MLP", ctx) + [
        f"Kernel size solved for the budget: {archs[0].config.kernel_sizes[0]} "
        f"(filters {archs[0].config.n_channels}, stride 1, padding 0, dense {archs[0].config.dense_hiddens}).", "",
        params_table(archs), "", runs_table(records), "",
        image(NAME, acc.name, "train and validation accuracy"),
    ]
    write_section(ctx.out, NAME, "\n".join(parts), ctx.warn)
    return records
