"""The networks of questions 2-5, sized by ``fn_trainer.app.solve`` against the reference MLP."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ...core.config import NetworkConfiguration
from ..report import markdown_table
from ..solve import (
    REFERENCE_MLP,
    TOLERANCE,
    Solution,
    fixed_solution,
    reference_budget,
    solve_cnn_channels,
    solve_cnn_kernel,
    solve_mlp_depth,
)
from .formatting import fmt_lr, network_label
from .records import RunSpec


@dataclass(frozen=True)
class Architecture:
    """A network of the homework: ``name`` for files, ``title`` for people, its
    parameter count and difference to the reference MLP's, and what was solved."""

    name: str
    title: str
    network_type: str
    config: NetworkConfiguration
    n_params: int
    difference: int
    solved: str  # e.g. "depth 54 (solved)" or "fixed by the question"

    @property
    def label(self) -> str:
        return network_label(self.title, self.n_params)

    def spec(self, *, lr: float, normalization: bool, batch_size: int, epochs: int, seed: int,
             label: str | None = None) -> RunSpec:
        norm = "norm" if normalization else "raw"
        return RunSpec(f"{self.name}-lr{fmt_lr(lr)}-{norm}-b{batch_size}-e{epochs}-s{seed}",
                       label or self.label, self.network_type, self.config, lr, normalization,
                       batch_size, epochs, seed)


def _from(solution: Solution, name: str, title: str, network_type: str, solved: str) -> Architecture:
    return Architecture(name, title, network_type, solution.config, solution.n_params, solution.difference, solved)


def reference_mlp() -> Architecture:
    """Question 2's MLP 784-256-256-10."""
    budget = reference_budget()
    return _from(fixed_solution("mlp", REFERENCE_MLP, budget), "mlp-256x2", "MLP 256-256", "mlp",
                 "reference")


def deep_mlp(width: int = 64) -> Architecture:
    """Question 3(b): ``width``-unit hidden layers, depth solved for the budget."""
    s = solve_mlp_depth(width)
    return _from(s, f"mlp-{width}x{s.value}", f"deep MLP {s.value}x{width}", "mlp",
                 f"depth {s.value} solved")


def kernel_cnn() -> Architecture:
    """Question 4: filters (16, 32, 45), dense (256, 256), kernel size solved."""
    s = solve_cnn_kernel((16, 32, 45), (256, 256))
    return _from(s, f"cnn-16-32-45-k{s.value}", f"CNN (16,32,45) k={s.value}", "cnn",
                 f"kernel size {s.value} solved")


def deep_cnn() -> Architecture:
    """Question 5(a): filters (8, 16, 32, 64), 1x1 kernels; fixed by the question, not solved."""
    config = NetworkConfiguration((8, 16, 32, 64), (1,) * 4, (1,) * 4, (0,) * 4, (256, 256))
    return _from(fixed_solution("cnn", config, reference_budget()), "cnn-8-16-32-64-k1", "deep CNN (8,16,32,64) k=1",
                 "cnn", "fixed by the question")


def shallow_cnn() -> Architecture:
    """Question 5(b): one 28x28 conv layer, its channel count solved for the budget."""
    s = solve_cnn_channels(28, (256, 256))
    return _from(s, f"cnn-{s.value}-k28", f"shallow CNN {s.value}ch k=28", "cnn",
                 f"{s.value} channels solved")


def params_table(archs: Sequence[Architecture]) -> str:
    """Parameter count of each network and its difference to the reference MLP."""
    reference = reference_mlp()
    rows = [[a.title, a.network_type, f"{a.n_params:,}", f"{a.difference:+,}",
             "yes" if abs(a.difference) <= TOLERANCE else "no", a.solved] for a in archs]
    return (f"Reference: {reference.title}, {reference.n_params:,} parameters; \"about the same\" means within "
            f"{TOLERANCE:,}.\n\n" + markdown_table(
                ["network", "type", "parameters", "difference to reference", f"within {TOLERANCE:,}", "size"],
                rows))
