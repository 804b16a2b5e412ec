"""Question 2: MLP 256-256 trained with each learning rate, without and with normalisation."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..plots import plot_curves
from ..report import image, write_section
from ..statistics import format_spread
from . import EXPERIMENTS, experiment_name
from .architectures import reference_mlp
from .configurations import Configuration, by_configuration
from .context import Context
from .figures import ACCURACY_YLIM, curves, seeds_note
from .formatting import (
    MEAN_STD,
    Contrast,
    differences,
    fmt_final_spread,
    fmt_lr,
    fmt_metric,
    header,
    runs_table,
    several_seeds,
    shared_note,
    spread_table,
)
from .records import RunRecord, RunSpec
from .training import execute, train_population, train_together

NAME = experiment_name(__name__)
TARGET = 0.80  # the homework: the best pair should pass 80% validation accuracy
NORMALIZATIONS = (False, True)  # off, then on: the homework's order of figures


def run(ctx: Context) -> List[RunRecord]:
    """Train ``--seeds`` runs per (lr, normalisation); figures, tables and report section."""
    s = ctx.settings
    arch = reference_mlp()
    batch_size = s.batch_size or EXPERIMENTS[NAME].batch_size
    folder = ctx.folder(NAME)
    specs = {normalization: [arch.spec(lr=lr, normalization=normalization, batch_size=batch_size,
                                       epochs=s.epochs, seed=seed, label=f"lr={fmt_lr(lr)}")
                             for lr in s.lrs for seed in s.run_seeds]
             for normalization in NORMALIZATIONS}
    records = train(ctx, specs)
    configurations = by_configuration(records)
    seeds = f"seed {s.seed}" if s.seeds == 1 else f"seeds {s.run_seeds[0]} to {s.run_seeds[-1]}"
    parts = header("2. Learning rate and normalisation", ctx)
    parts.append(f"Network: {arch.label}, batch size {batch_size}, epochs: {s.epochs}, every run "
                 f"initialised from {seeds}.")
    parts.append("")
    figures_at = len(parts)
    parts += [runs_table(records), "", *shared_note(records)]
    if several_seeds(configurations):
        parts += [spread_table(configurations), ""]
    best = best_configuration(configurations)
    parts.append(best_pair(best))
    # at every learning rate of the sweep: a rate picked on these runs would favour its side
    parts += ["", *differences([normalisation_contrast(configurations, lr, best) for lr in s.lrs],
                               len(ctx.splits.valid.y))]

    def compose() -> str:
        figures = []
        for normalization in NORMALIZATIONS:
            group = [c for c in configurations if c.spec.normalization == normalization]
            word = "normalised" if normalization else "raw"
            path = plot_curves(
                curves(group, "validation_accuracy"), folder / f"validation_accuracy_{word}.png",
                title=f"Validation accuracy, {arch.label}\n{'with' if normalization else 'without'} "
                      f"normalisation, batch {batch_size}" + seeds_note(group),
                ylabel="validation accuracy", ylim=ACCURACY_YLIM)
            figures += [image(NAME, path.name, f"validation accuracy, {word} inputs"), ""]
        return "\n".join([*parts[:figures_at], *figures, *parts[figures_at:]])
    write_section(ctx.out, NAME, compose, ctx.warn)
    return records


def train(ctx: Context, specs: Dict[bool, List[RunSpec]]) -> List[RunRecord]:
    """Records of every run, raw ones first: with ``--sequential`` or ``--parallel data`` each
    alone; with one seed the learning rates of each normalisation together (``fit_sweep``,
    as before seeds); with several seeds, or split over torchrun's ranks, every run of the
    sweep in one population."""
    s = ctx.settings
    alone = s.sequential or s.parallel == "data"  # --parallel data: every rank trains each run in turn
    if alone or (s.seeds == 1 and s.parallel is None):
        group = None if alone else train_together
        return [r for normalization in NORMALIZATIONS for r in execute(ctx, specs[normalization], group)]
    return execute(ctx, [sp for normalization in NORMALIZATIONS for sp in specs[normalization]], train_population)


def best_configuration(configurations: Sequence[Configuration]) -> Optional[Configuration]:
    """The configuration with the highest mean (over seeds) of the best validation accuracy
    (the first of equals), ``None`` if no run has a finite one."""
    scored = [(c.best_spread().mean, c) for c in configurations if c.best_spread() is not None]
    return max(scored, key=lambda t: t[0])[1] if scored else None


def best_pair(c: Optional[Configuration]) -> str:
    """The best configuration's accuracies, and whether it passes 80% (its mean, with several seeds)."""
    if c is None:
        return "No run has a finite validation accuracy."
    pair = f"lr={fmt_lr(c.spec.lr)}, normalisation {'on' if c.spec.normalization else 'off'}"
    best = c.best_spread()
    if len(c.runs) == 1:
        r = c.runs[0]
        _, epoch = r.best()
        return (f"Best pair: {pair}: best validation accuracy {best.mean:.4f} (epoch {epoch}), final "
                f"{fmt_final_spread(c) if r.diverged else fmt_metric(r.final())}; above {TARGET:.0%}: "
                f"{'yes' if best.mean > TARGET else 'no'}.")
    return (f"Best pair (the highest mean over its {len(c.runs)} seeds of the best validation accuracy): {pair}: "
            f"best validation accuracy {format_spread(best)} ({MEAN_STD}), final {fmt_final_spread(c)}; "
            f"mean above {TARGET:.0%}: {'yes' if best.mean > TARGET else 'no'}.")


def normalisation_contrast(configurations: Sequence[Configuration], lr: float,
                           best: Optional[Configuration]) -> Contrast:
    """Normalisation on against off at learning rate ``lr`` (marked where it is the ``best`` pair's)."""
    at = {c.spec.normalization: c for c in configurations if c.spec.lr == lr}
    mark = " (the best pair's)" if best is not None and best.spec.lr == lr else ""
    return f"normalisation on against off at lr={fmt_lr(lr)}{mark}", at[True], at[False]
