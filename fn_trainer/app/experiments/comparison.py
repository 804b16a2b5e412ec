"""The recipe of questions 3-5: train some architectures as the homework Trainer's defaults
have it (normalised inputs, ``--lr``, ``--epochs``; ``--seeds`` runs each, from ``--seed``
on; stored runs are reused), then write the accuracy figure, a parameter table, the runs
table, the spreads over seeds, the differences the question asks about and the report section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from ..report import image, write_section
from . import EXPERIMENTS
from .architectures import Architecture, params_table, reference_mlp
from .configurations import Configuration
from .context import Context
from .figures import accuracy_figure, gradient_figure
from .formatting import differences, fmt_lr, header, runs_table, several_seeds, shared_note, spread_table
from .records import RunRecord
from .training import execute, seeds_trainer


@dataclass(frozen=True)
class Comparison:
    """One question: ``title`` heads its section, ``subject`` titles its accuracy figure;
    its default batch size is ``EXPERIMENTS[name].batch_size``.

    ``architectures`` builds the networks to train (on use: sizing them builds networks);
    ``note(architectures, batch_size)`` is a paragraph before the tables;
    ``with_reference`` lists the reference MLP in the parameter table though it is not
    trained; ``gradient_norm`` adds the figure of the gradient norms; ``contrasts``, pairs
    of indices into the architectures, are the differences the question asks about
    (first minus second).
    """

    name: str
    title: str
    subject: str
    architectures: Callable[[], List[Architecture]]
    note: Optional[Callable[[Sequence[Architecture], int], str]] = None
    with_reference: bool = False
    gradient_norm: bool = False
    contrasts: Tuple[Tuple[int, int], ...] = ()

    def run(self, ctx: Context) -> List[RunRecord]:
        """Train (or reuse) the runs, draw the figures and write the report section."""
        s = ctx.settings
        archs = self.architectures()
        batch_size = s.batch_size or EXPERIMENTS[self.name].batch_size
        configurations = [
            Configuration(tuple(execute(ctx, [a.spec(lr=s.lr, normalization=True, batch_size=batch_size,
                                                     epochs=s.epochs, seed=seed) for seed in s.run_seeds],
                                        seeds_trainer(s))))
            for a in archs]
        records = [r for c in configurations for r in c.runs]
        parts = header(self.title, ctx)
        if self.note is not None:
            parts += [self.note(archs, batch_size), ""]
        tabled = [reference_mlp(), *archs] if self.with_reference else archs
        parts += [params_table(tabled), "", runs_table(records), "", *shared_note(records)]
        if several_seeds(configurations):
            parts += [spread_table(configurations), ""]
        parts += differences([(f"{archs[i].title} against {archs[j].title}", configurations[i], configurations[j])
                              for i, j in self.contrasts], len(ctx.splits.valid.y))

        def compose() -> str:
            figures = self.figures(ctx, configurations, f"lr={fmt_lr(s.lr)}, normalised, batch {batch_size}")
            return "\n".join([*parts, "", "\n\n".join(figures)])
        write_section(ctx.out, self.name, compose, ctx.warn)
        return records

    def figures(self, ctx: Context, configurations: Sequence[Configuration], setting: str) -> List[str]:
        """Draw the figures into ``<out>/<name>/``; their markdown, in order."""
        folder = ctx.folder(self.name)
        acc = accuracy_figure(configurations, folder / "accuracy.png", f"Accuracy: {self.subject}\n{setting}")
        shown = [image(self.name, acc.name, "train and validation accuracy")]
        if self.gradient_norm:
            grad = gradient_figure(configurations, folder / "gradient_norm.png",
                                   f"Gradient norm of each epoch's last minibatch\n{setting}")
            shown.append(image(self.name, grad.name, "gradient norm"))
        return shown
