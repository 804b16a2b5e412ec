"""How runs are written for people: learning rates, network labels, a run's summary line,
the runs table and a section's header in ``report.md``."""
from __future__ import annotations

from typing import List, Optional, Sequence

from ..report import markdown_table
from .context import Context
from .records import RunRecord


def fmt_lr(lr: float) -> str:
    """A learning rate as written in names and legends: 0.01, 0.0001, 1e-08."""
    return f"{lr:g}"


def fmt_metric(value: Optional[float]) -> str:
    """An accuracy or loss to 4 decimals; ``"n/a"`` where there is none."""
    return "n/a" if value is None else f"{value:.4f}"


def network_label(network: str, n_params: int) -> str:
    """``"<network> (269,322 params)"``."""
    return f"{network} ({n_params:,} params)"


def summary(record: RunRecord, skipped: bool = False) -> str:
    """One line about a finished run."""
    best, epoch = record.best()
    status = f"DIVERGED ({record.diverged})" if record.diverged else "ok"
    how = "already done, skipped" if skipped else f"{record.wall_time_s:.1f} s"
    return (f"{record.spec.name}: {status}; validation accuracy final {fmt_metric(record.final())}, best "
            f"{fmt_metric(best)} (epoch {epoch}); {record.n_params:,} params; {how}")


def runs_table(records: Sequence[RunRecord]) -> str:
    """Markdown table: per run its network, settings, final/best accuracies, status, time
    ("shared": trained together with others in one vmapped step, the group's time)."""
    rows = []
    for r in records:
        best, epoch = r.best()
        s = r.spec
        rows.append([s.label, f"{r.n_params:,}", fmt_lr(s.lr), "on" if s.normalization else "off",
                     s.batch_size, s.epochs, fmt_metric(r.final("train_accuracy")), fmt_metric(r.final()),
                     f"{fmt_metric(best)} (epoch {epoch})", r.diverged.split(":")[0] if r.diverged else "ok",
                     f"{r.wall_time_s:.1f}" + (" (shared)" if r.trained_together else "")])
    return markdown_table(["run", "params", "lr", "normalisation", "batch", "epochs",
                           "final train acc", "final valid acc", "best valid acc", "status",
                           "wall time (s)"], rows)


def header(title: str, ctx: Context) -> List[str]:
    """The first lines of a training experiment's section: its title, the command, the data."""
    s = ctx.settings
    limit = "all" if s.limit is None else f"the first {s.limit}"
    return [f"## {title}", "", f"Command: `{s.command}`", "",
            f"Training samples: {limit} ({len(ctx.splits.train.y):,}); validation samples: "
            f"{len(ctx.splits.valid.y):,}; seed {s.seed}; Adam, ReLU.", ""]
