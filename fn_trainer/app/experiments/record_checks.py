"""Validation of a stored run record read back from disk: the file may have been edited,
so every field is checked before a record is trusted."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ...core.checks import is_finite_number, shown
from ...core.config import NetworkConfiguration
from ...training.loop import LOG_KEYS

SPEC_TYPES = {"name": str, "label": str, "network_type": str, "config": dict, "lr": (int, float),
              "normalization": bool, "batch_size": int, "epochs": int, "seed": int}
RECORD_TYPES = {"spec": dict, "config_hash": str, "n_params": int, "logs": dict, "diverged": (str, type(None)),
                "wall_time_s": (int, float), "trainer": str}
OPTIONAL_FIELDS = ("trainer",)  # of a record; older records have none


def _typed(value: Any, types: Any) -> bool:
    # JSON has no int/bool distinction in Python's eyes: True is an int, and no count is True.
    return isinstance(value, types) and (types is bool or not isinstance(value, bool))


def record_problem(data: Any) -> Optional[str]:
    """What makes ``data`` an invalid stored run record, or ``None``.

    Checked: exactly the known fields (``trainer`` optional) and spec fields, and their
    types; a configuration of lists of integers; texts of one printable line; values in
    range (``lr`` finite > 0, ``batch_size >= 1``, ``epochs >= 0``, ``n_params >= 0``,
    ``wall_time_s`` finite >= 0); logs with exactly ``LOG_KEYS``, finite numbers or ``None`` (non-finite),
    accuracies in [0, 1], losses and gradient norms >= 0, ``epochs + 1`` metric entries
    (fewer after a divergence) and one gradient norm fewer.
    """
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    for fields, where, what in ((RECORD_TYPES, data, "it"), (SPEC_TYPES, data.get("spec"), "its spec")):
        if not isinstance(where, dict):
            return "its spec is not an object"
        unknown = sorted(set(where) - set(fields))
        if unknown:
            return f"{what} has unknown fields {unknown}"
        for key, types in fields.items():
            if key not in where and not (key in OPTIONAL_FIELDS and where is data):
                return f"{what} has no {key!r}"
            if key in where and not _typed(where[key], types):
                return f"its {key!r} is {where[key]!r}, of the wrong type"
    spec, logs = data["spec"], data["logs"]
    if set(spec["config"]) != set(NetworkConfiguration._fields) or not all(
            isinstance(v, list) and all(_typed(i, int) for i in v) for v in spec["config"].values()):
        return f"its spec's config is not a network configuration: {spec['config']!r}"
    return _text_problem(spec, data) or _range_problem(spec, data) or _logs_problem(logs, spec["epochs"],
                                                                                  data["diverged"])


def _text_problem(spec: Dict[str, Any], data: Dict[str, Any]) -> Optional[str]:
    """Which text of a record (its types already checked) is not one printable line, or
    ``None``: the report and the console print them as they are."""
    for what, value in (("spec's name", spec["name"]), ("spec's label", spec["label"]),
                        ("trainer", data.get("trainer")), ("diverged", data["diverged"])):
        if isinstance(value, str) and not value.isprintable():
            return f"its {what} is {value!r}, expected one line of printable text"
    return None


def _range_problem(spec: Dict[str, Any], data: Dict[str, Any]) -> Optional[str]:
    """Which number of a record (its types already checked) is out of range, or ``None``."""
    checks = (("spec's lr", spec["lr"], lambda v: is_finite_number(v) and v > 0, "a finite number > 0"),
              ("spec's batch_size", spec["batch_size"], lambda v: v >= 1, "an integer >= 1"),
              ("spec's epochs", spec["epochs"], lambda v: v >= 0, "an integer >= 0"),
              ("n_params", data["n_params"], lambda v: is_finite_number(v) and v >= 0,
               "an integer >= 0 within the float range"),
              ("wall_time_s", data["wall_time_s"], lambda v: is_finite_number(v) and v >= 0, "a finite number >= 0"))
    for what, value, ok, expected in checks:
        if not ok(value):
            return f"its {what} is {shown(value)}, expected {expected}"
    return None


def _logs_problem(logs: Dict[str, Any], epochs: int, diverged: Optional[str]) -> Optional[str]:
    """What is wrong with a record's logs (keys, values, lengths for ``epochs``), or ``None``."""
    if set(logs) != set(LOG_KEYS):
        return f"its logs have the keys {sorted(logs)}, expected {sorted(LOG_KEYS)}"
    for key, values in logs.items():
        if not isinstance(values, list) or not all(v is None or _typed(v, (int, float)) for v in values):
            return f"its logs[{key!r}] is not a list of numbers"
        low, high = (0.0, 1.0) if key.endswith("_accuracy") else (0.0, math.inf)
        bad = [v for v in values if v is not None and not (is_finite_number(v) and low <= v <= high)]
        if bad:
            return f"its logs[{key!r}] holds {bad[0]!r}, expected finite numbers in [{low}, {high}] or null"
    if diverged is None:  # after training starts, a non-finite value (null) marks the run diverged
        for key, values in logs.items():
            if None in values[0 if key == "train_gradient_norm" else 1:]:
                return f"its logs[{key!r}] holds null after training began, but the run is not marked diverged"
    n = len(logs["validation_accuracy"])
    complete = n == epochs + 1 or (diverged is not None and 1 <= n <= epochs + 1)
    if not complete or any(len(v) != (n - 1 if k == "train_gradient_norm" else n) for k, v in logs.items()):
        return (f"its logs have {sorted((k, len(v)) for k, v in logs.items())} entries, expected "
                f"{epochs + 1} per metric and {epochs} gradient norms for {epochs} epochs")
    return None
