"""The course template's interface, as data: what a submission's ``solution.py`` must define.

Kept in the package (not read from the course's spec page) so that an installed grader
knows it; ``tests/test_grading.py`` checks it against ``template-interface.md``.
A parameter is written as Python spells it: ``name``, ``name=default`` or ``*name``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple


class Signature(NamedTuple):
    """One function or method: its parameters (``self`` included) and whether it is a
    ``@staticmethod``."""

    params: Tuple[str, ...]
    static: bool = False


NETWORK_CONFIGURATION_FIELDS: Dict[str, Tuple[int, ...]] = {
    "n_channels": (16, 32, 48),
    "kernel_sizes": (3, 3, 3),
    "strides": (1, 1, 1),
    "paddings": (0, 0, 0),
    "dense_hiddens": (256, 256),
}

FUNCTIONS: Dict[str, Signature] = {
    "gradient_norm": Signature(("function", "*tensor_list")),
    "jacobian_norm": Signature(("function", "input_tensor")),
}

TRAINER_METHODS: Dict[str, Signature] = {
    "__init__": Signature((
        "self", "network_type='mlp'", "net_config=NetworkConfiguration()", "datapath='./data'",
        "n_classes=10", "lr=0.0001", "batch_size=128", "activation_name='relu'",
        "normalization=True",
    )),
    "load_dataset": Signature(("datapath",), static=True),
    "create_mlp": Signature(("input_dim", "net_config", "n_classes", "activation"), static=True),
    "create_cnn": Signature(("in_channels", "net_config", "n_classes", "activation"), static=True),
    "create_activation_function": Signature(("activation_str",), static=True),
    "one_hot": Signature(("self", "y")),
    "compute_loss_and_accuracy": Signature(("self", "X", "y")),
    "compute_gradient_norm": Signature(("network",), static=True),
    "training_step": Signature(("self", "X_batch", "y_batch")),
    "log_metrics": Signature(("self", "X_train", "y_train_oh", "X_valid", "y_valid_oh")),
    "train_loop": Signature(("self", "n_epochs")),
    "evaluate": Signature(("self", "X", "y")),
    "normalize": Signature(("train", "valid", "test"), static=True),
    "test_equivariance": Signature(("self",)),
}


def differences(found: Dict[str, object]) -> list[str]:
    """What a submission's interface lacks or changes, one sentence per difference.

    ``found`` is what the submission's process reported (see ``probe.describe_interface``):
    ``{"functions": {name: entry}, "trainer": {name: entry} | None, "config": {field: default} | None}``
    where an entry is ``None`` (missing) or ``{"params": [...], "static": bool}``.
    """
    notes = []
    config = found.get("config")
    expected_config = {k: repr(v) for k, v in NETWORK_CONFIGURATION_FIELDS.items()}
    if config is None:
        notes.append("NetworkConfiguration is missing or is not a NamedTuple")
    elif config != expected_config:
        notes.append(f"NetworkConfiguration has fields {config}, the template has {expected_config}")
    groups = (("", FUNCTIONS, found.get("functions") or {}),
              ("Trainer.", TRAINER_METHODS, found.get("trainer")))
    for prefix, expected, got in groups:
        if got is None:
            notes.append("class Trainer is missing")
            continue
        for name, want in expected.items():
            entry = got.get(name)
            if entry is None:
                notes.append(f"{prefix}{name} is missing")
                continue
            if tuple(entry["params"]) != want.params:
                notes.append(f"{prefix}{name} takes ({', '.join(entry['params'])}); the template has "
                             f"({', '.join(want.params)})")
            if bool(entry["static"]) != want.static:
                notes.append(f"{prefix}{name} {'is' if entry['static'] else 'is not'} a @staticmethod; "
                             f"in the template it {'is' if want.static else 'is not'}")
    return notes
