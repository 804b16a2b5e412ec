"""The recipe of questions 3-5: train some architectures as the homework Trainer's defaults
have it (normalised inputs, ``--lr``, ``--epochs``, ``--seed``; stored runs are reused),
then write the accuracy figure, a parameter table, the runs table and the report section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ..report import image, write_section
from . import EXPERIMENTS
from .architectures import Architecture, params_table, reference_mlp
from .context import Context
from .figures import accuracy_figure, gradient_figure
from .formatting import fmt_lr, header, runs_table
from .records import RunRecord
from .training import execute


@dataclass(frozen=True)
class Comparison:
    """One question: ``title`` heads its section, ``subject`` titles its accuracy figure;
    its default batch size is ``EXPERIMENTS[name].batch_size``.

    ``architectures`` builds the networks to train (on use: sizing them builds networks);
    ``note(architectures, batch_size)`` is a paragraph before the tables;
    ``with_reference`` lists the reference MLP in the parameter table though it is not
    trained; ``gradient_norm`` adds the figure of the gradient norms.
    """

    name: str
    title: str
    subject: str
    architectures: Callable[[], List[Architecture]]
    note: Optional[Callable[[Sequence[Architecture], int], str]] = None
    with_reference: bool = False
    gradient_norm: bool = False

    def run(self, ctx: Context) -> List[RunRecord]:
        """Train (or reuse) the runs, draw the figures and write the report section."""
        s = ctx.settings
        archs = self.architectures()
        batch_size = s.batch_size or EXPERIMENTS[self.name].batch_size
        records = execute(ctx, [a.spec(lr=s.lr, normalization=True, batch_size=batch_size, epochs=s.epochs,
                                       seed=s.seed) for a in archs])
        parts = header(self.title, ctx)
        if self.note is not None:
            parts += [self.note(archs, batch_size), ""]
        tabled = [reference_mlp(), *archs] if self.with_reference else archs
        parts += [params_table(tabled), "", runs_table(records), "",
                  "\n\n".join(self.figures(ctx, records, f"lr={fmt_lr(s.lr)}, normalised, batch {batch_size}"))]
        write_section(ctx.out, self.name, "\n".join(parts), ctx.warn)
        return records

    def figures(self, ctx: Context, records: Sequence[RunRecord], setting: str) -> List[str]:
        """Draw the figures into ``<out>/<name>/``; their markdown, in order."""
        folder = ctx.folder(self.name)
        acc = accuracy_figure(records, folder / "accuracy.png", f"Accuracy: {self.subject}\n{setting}")
        shown = [image(self.name, acc.name, "train and validation accuracy")]
        if self.gradient_norm:
            grad = gradient_figure(records, folder / "gradient_norm.png",
                                   f"Gradient norm of each epoch's last minibatch\n{setting}")
            shown.append(image(self.name, grad.name, "gradient norm"))
        return shown
