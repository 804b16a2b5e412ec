"""The homework's section-2 experiments, one module per question.

Each module has ``NAME`` and ``run(ctx)``: it trains (or reuses) its runs, saves its
figures under ``<out>/<NAME>/`` and rewrites its section of ``<out>/report.md``.
Modules are imported on use, so ``equivariance.equivariance_maps`` needs only torch
and torchvision.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# Subcommand name -> module, in the homework's question order.
EXPERIMENTS = {
    "equivariance": "equivariance",
    "lr-sweep": "lr_sweep",
    "depth": "depth",
    "cnn": "cnn",
    "cnn-shapes": "cnn_shapes",
}


def experiment(name: str) -> ModuleType:
    """The module of experiment ``name`` (one of ``EXPERIMENTS``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {list(EXPERIMENTS)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{EXPERIMENTS[name]}")
