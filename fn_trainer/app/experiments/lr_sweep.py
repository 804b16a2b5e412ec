"""Question 2: MLP 256-256 trained with each learning rate, without and with normalisation."""
from __future__ import annotations

from typing import List

from ..plots import plot_curves
from ..report import image, write_section
from . import EXPERIMENTS, experiment_name
from .architectures import reference_mlp
from .context import Context
from .figures import ACCURACY_YLIM, curves
from .formatting import fmt_lr, header, runs_table
from .records import RunRecord
from .training import execute, train_together

NAME = experiment_name(__name__)
TARGET = 0.80  # the homework: the best pair should pass 80% validation accuracy


def run(ctx: Context) -> List[RunRecord]:
    """Train one run per (lr, normalisation); figures, table and report section."""
    s = ctx.settings
    arch = reference_mlp()
    batch_size = s.batch_size or EXPERIMENTS[NAME].batch_size
    folder = ctx.folder(NAME)
    records: List[RunRecord] = []
    parts = header("2. Learning rate and normalisation", ctx)
    parts.append(f"Network: {arch.label}, batch size {batch_size}, epochs: {s.epochs}, every run "
                 f"initialised from seed {s.seed}.")
    parts.append("")
    for normalization in (False, True):
        specs = [arch.spec(lr=lr, normalization=normalization, batch_size=batch_size, epochs=s.epochs,
                           seed=s.seed, label=f"lr={fmt_lr(lr)}") for lr in s.lrs]
        group = execute(ctx, specs, train_group=None if s.sequential else train_together)
        records += group
        word = "normalised" if normalization else "raw"
        path = plot_curves(
            curves(group, "validation_accuracy"), folder / f"validation_accuracy_{word}.png",
            title=f"Validation accuracy, {arch.label}\n{'with' if normalization else 'without'} "
                  f"normalisation, batch {batch_size}",
            ylabel="validation accuracy", ylim=ACCURACY_YLIM)
        parts += [image(NAME, path.name, f"validation accuracy, {word} inputs"), ""]
    parts += [runs_table(records), "", best_pair(records)]
    if any(r.trained_together for r in records):
        parts += ["", "Runs with a \"shared\" wall time were trained together, one vmapped step for all "
                      "learning rates of a normalisation setting; the time is the group's."]
    write_section(ctx.out, NAME, "\n".join(parts), ctx.warn)
    return records


def best_pair(records: List[RunRecord]) -> str:
    """The run with the highest validation accuracy reached, and whether it passes 80%."""
    scored = [(r.best()[0], r) for r in records if r.best()[0] is not None]
    if not scored:
        return "No run has a finite validation accuracy."
    acc, r = max(scored, key=lambda t: t[0])
    _, epoch = r.best()
    return (f"Best pair: lr={fmt_lr(r.spec.lr)}, normalisation {'on' if r.spec.normalization else 'off'}: "
            f"best validation accuracy {acc:.4f} (epoch {epoch}), final {r.final():.4f}; "
            f"above {TARGET:.0%}: {'yes' if acc > TARGET else 'no'}.")

