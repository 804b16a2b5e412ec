"""How runs are written for people: learning rates, network labels, a run's summary line,
the runs table, the configurations' spreads over seeds and their differences, and a
section's header in ``report.md``."""
from __future__ import annotations

import math
import re
from typing import List, Optional, Sequence, Tuple

from ...training.loop import N_TRAIN_EVAL
from ..report import markdown_table
from ..statistics import LEVEL, Spread, format_difference, format_spread, welch_difference
from .configurations import Configuration
from .context import Context, Settings
from .records import RunRecord

MEAN_STD = "mean ± sample std"  # over seeds: the standard deviation with n - 1 (statistics.spread)


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
                     s.batch_size, s.epochs, s.seed, fmt_metric(r.final("train_accuracy")), fmt_metric(r.final()),
                     f"{fmt_metric(best)} (epoch {epoch})", status_cell(r),
                     f"{r.wall_time_s:.1f}" + (" (shared)" if r.trained_together else "")])
    return markdown_table(["run", "params", "lr", "normalisation", "batch", "epochs", "seed",
                           "final train acc", "final valid acc", "best valid acc", "status",
                           "wall time (s)"], rows)


def status_cell(record: RunRecord) -> str:
    """``ok``, or the reason a run diverged up to its first colon, as a code span: the
    reason is read back from the run's record, whose text must not become the report's
    Markdown (a link, an image)."""
    return code_span(record.diverged.split(":")[0]) if record.diverged else "ok"


def shared_note(records: Sequence[RunRecord]) -> List[str]:
    """What a "shared" wall time in the runs table means, and a blank line; nothing if no run has one."""
    if not any(r.trained_together for r in records):
        return []
    return ["Runs with a \"shared\" wall time were trained together with others in one vmapped step (the "
            "\"trainer\" of the run's JSON file says with how many); the time is the group's.", ""]


def fmt_spread(s: Optional[Spread]) -> str:
    """``mean ± std`` of an accuracy over seeds; ``"n/a"`` where no run has a value."""
    return "n/a" if s is None else format_spread(s)


def fmt_final_spread(c: Configuration) -> str:
    """``mean ± std`` of the final validation accuracy over seeds, or ``"n/a (<why>)"``
    where a seed diverged: a diverged run's last finite value comes from before its
    divergence, not from the last epoch."""
    return f"n/a ({c.diverged_note})" if c.n_diverged else fmt_spread(c.final_spread())


def spread_table(configurations: Sequence[Configuration]) -> str:
    """Markdown table: per configuration its seeds and the mean ± std (sample standard
    deviation) over them of the final (n/a where a seed diverged) and the best validation
    accuracy."""
    rows = [[c.spec.label, f"{c.n_params:,}", fmt_lr(c.spec.lr), "on" if c.spec.normalization else "off",
             len(c.runs), fmt_final_spread(c), fmt_spread(c.best_spread()), c.n_diverged] for c in configurations]
    return markdown_table(["configuration", "params", "lr", "normalisation", "seeds",
                           f"final valid acc ({MEAN_STD})", f"best valid acc ({MEAN_STD})", "diverged runs"], rows)


def several_seeds(configurations: Sequence[Configuration]) -> bool:
    """Whether any configuration has more than one run (then spreads are worth a table)."""
    return any(len(c.runs) > 1 for c in configurations)


Contrast = Tuple[str, Configuration, Configuration]  # what is compared, first, second


def differences(contrasts: Sequence[Contrast], n_valid: Optional[int] = None) -> List[str]:
    """The report's comparisons: a paragraph on the method and what its intervals leave out,
    then per contrast the difference (first minus second) of the mean final and of the mean
    best validation accuracy, with Welch's t interval over seeds and whether it exceeds seed
    noise. The final one is n/a when a run of either side diverged; the best one says how
    many seeds diverged (their best predates it). ``n_valid``: the validation images, whose
    own sampling error the method paragraph states."""
    if not contrasts:
        return []
    sizes = sorted({len(c.runs) for _, a, b in contrasts for c in (a, b)})
    if sizes[0] < 2:
        method = ("Differences of validation accuracy, first minus second. With one seed per configuration "
                  f"there is no interval: seed noise is not measured (rerun with --seeds {Settings.seeds}).")
    else:
        images = "the same validation images" if n_valid is None else f"the same {n_valid:,} validation images"
        sampling = ("" if n_valid is None else
                    f" (one standard error, √(p(1 − p)/n): {math.sqrt(0.16 / n_valid):.3f} at an accuracy of 0.8)")
        several = ("" if len(contrasts) == 1 else
                   f" Each interval is for its comparison alone, not adjusted for the {len(contrasts)} drawn here.")
        method = (f"Differences of the mean validation accuracy over {' or '.join(map(str, sizes))} seeds, first "
                  f"minus second, with Welch's t {LEVEL:.0%} confidence interval (unequal variances, the runs taken "
                  f"as independent samples); a difference exceeds seed noise when its interval excludes 0.{several} "
                  f"The noise is the initialisation's alone: every run is measured on {images}, whose own sampling "
                  f"error{sampling} the intervals leave out. Final is the last epoch's accuracy; best is a run's "
                  f"highest over its evaluations (the one before training included), picked on those same images, "
                  f"so an optimistic figure.")
    lines = [method, ""]
    for what, a, b in contrasts:
        # with one seed, the final's n/a already says which run diverged
        flagged = (a.n_diverged or b.n_diverged) and max(len(a.runs), len(b.runs)) > 1
        lines.append(f"- {what}: final {_final_difference(a, b)}; best {_difference(a.bests(), b.bests())}"
                     + (f", counting seeds that diverged after their best ({_diverged(a, b)})" if flagged else ""))
    return lines


def _diverged(a: Configuration, b: Configuration) -> str:
    """``1 of 3 seeds of the first and 2 of 3 seeds of the second``: the seeds of a contrast that diverged."""
    return " and ".join(f"{c.n_diverged} of {len(c.runs)} seeds of the {side}"
                        for side, c in (("first", a), ("second", b)) if c.n_diverged)


def _final_difference(a: Configuration, b: Configuration) -> str:
    """The final accuracies' difference, or why there is none: a diverged run's last finite
    value comes from before its divergence, not from the last epoch."""
    if a.n_diverged or b.n_diverged:
        return f"n/a ({_diverged(a, b)} diverged: a diverged run has no last-epoch accuracy)"
    return _difference(a.finals(), b.finals())


def _difference(a: Sequence[float], b: Sequence[float]) -> str:
    if not a or not b:
        return "n/a (a side has no finite validation accuracy)"
    return format_difference(welch_difference(a, b))


def header(title: str, ctx: Context) -> List[str]:
    """The first lines of a training experiment's section: its title, the command, the data,
    and what the seeds vary (only the initialisation; ``differences`` says what the seed
    noise of the comparisons leaves out)."""
    s = ctx.settings
    limit = "all" if s.limit is None else f"the first {s.limit}"
    seeds = (f"seed {s.seed}" if s.seeds == 1 else
             f"seeds {s.run_seeds[0]} to {s.run_seeds[-1]} ({s.seeds} runs per configuration; a seed sets the "
             "initialisation only, every run reading the same minibatches in the same order)")
    return [f"## {title}", "", f"Command: {code_span(s.command)}", "",
            f"Training samples: {limit} ({len(ctx.splits.train.y):,}; train accuracy and loss are measured on "
            f"the first {min(N_TRAIN_EVAL, len(ctx.splits.train.y)):,}); validation samples: "
            f"{len(ctx.splits.valid.y):,}; {seeds}; Adam, ReLU.", ""]


def code_span(text: str) -> str:
    """``text`` as a Markdown code span, fenced by one backtick more than its longest run of
    them (a path may hold backticks), with spaces where it starts or ends with one."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
