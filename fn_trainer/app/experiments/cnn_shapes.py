"""Question 5: deep (1x1 kernels), shallow (one 28x28 kernel) and question 4's CNN."""
from __future__ import annotations

from typing import List

from ..report import image, write_section
from .architectures import deep_cnn, kernel_cnn, reference_mlp, shallow_cnn
from .common import accuracy_figure, header, params_table, train_normalised
from .context import Context
from .formatting import fmt_lr, runs_table
from .records import RunRecord

NAME = "cnn-shapes"
BATCH_SIZE = 256


def run(ctx: Context) -> List[RunRecord]:
    """Train the three CNNs with the same settings (normalised, ``--lr``, batch 256)."""
    s = ctx.settings
    archs = [kernel_cnn(), deep_cnn(), shallow_cnn()]
    batch_size = s.batch_size or BATCH_SIZE
    records = train_normalised(ctx, archs, batch_size)
    acc = accuracy_figure(records, ctx.folder(NAME) / "accuracy.png",
                          f"Accuracy: three CNN shapes\nlr={fmt_lr(s.lr)}, normalised, batch {batch_size}")
    shallow = archs[2]
    parts = header("5. CNN shapes: deep 1x1 kernels, shallow 28x28 kernel", ctx) + [
        f"Shallow CNN channel count solved for the budget: {shallow.config.n_channels[0]}. "
        f"The deep CNN is fixed by the question (not solved); its difference is reported as is. "
        f"All three CNNs, question 4's included, are trained here with batch size {batch_size}.", "",
        params_table([reference_mlp(), *archs]), "", runs_table(records), "",
        image(NAME, acc.name, "train and validation accuracy"),
    ]
    write_section(ctx.out, NAME, "\n".join(parts), ctx.warn)
    return records
