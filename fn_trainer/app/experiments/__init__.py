"""The homework's section-2 experiments, one module per question.

Each module has ``NAME`` and ``run(ctx)``: it trains (or reuses) its runs, saves its
figures under ``<out>/<NAME>/`` and rewrites its section of ``<out>/report.md``.
Modules are imported on use, so ``equivariance.equivariance_maps`` needs only torch
and torchvision, and the command line builds its help without them.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, NamedTuple, Optional


class Experiment(NamedTuple):
    """How the command line offers an experiment: ``summary`` is its help, ``batch_size``
    the default minibatch size of its runs (``None``: it trains nothing), ``sweep``
    whether it trains one run per ``--lrs`` (else with the one ``--lr``)."""

    summary: str
    batch_size: Optional[int] = None
    sweep: bool = False


# Subcommand name -> experiment, in the homework's question order. The module of an
# experiment is its name with "_" for "-".
EXPERIMENTS: Dict[str, Experiment] = {
    "equivariance": Experiment("Q1: a conv-only model's equivariance to shifts and 90° rotations (four figures)"),
    "lr-sweep": Experiment("Q2: MLP 256-256 with learning rates x normalisation off/on", 128, sweep=True),
    "depth": Experiment("Q3: MLP 256-256 against a deep 64-unit MLP of solved depth", 128),
    "cnn": Experiment("Q4: CNN (16,32,45) with a solved kernel size against the MLP", 128),
    "cnn-shapes": Experiment("Q5: question 4's CNN, a deep 1x1-kernel CNN and a shallow 28x28-kernel CNN", 256),
}


def experiment_name(module: str) -> str:
    """The name of the experiment whose module is ``module`` (its ``__name__``)."""
    return module.rsplit(".", 1)[-1].replace("_", "-")


def experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (one of ``EXPERIMENTS``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {list(EXPERIMENTS)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
