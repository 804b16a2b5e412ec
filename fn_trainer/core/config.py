"""The homework's settings shared by every layer: the architecture description and the seed."""
# No ``from __future__ import annotations`` here: the template's NamedTuple carries its
# field types as types, which code comparing ``__annotations__`` with it sees.
from typing import NamedTuple, Tuple

# The course template seeds numpy, torch and random with it on import; the command line's default.
HOMEWORK_SEED = 197331


class NetworkConfiguration(NamedTuple):
    """Hidden-layer hyper-parameters, one tuple entry per layer.

    The first four fields describe the convolutional layers of a CNN (they must have
    equal lengths); ``dense_hiddens`` lists the widths of the fully-connected hidden
    layers of both MLPs and CNNs.
    """

    n_channels: Tuple[int, ...] = (16, 32, 48)
    kernel_sizes: Tuple[int, ...] = (3, 3, 3)
    strides: Tuple[int, ...] = (1, 1, 1)
    paddings: Tuple[int, ...] = (0, 0, 0)
    dense_hiddens: Tuple[int, ...] = (256, 256)
