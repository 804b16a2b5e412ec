"""Network builders: ``nn.Sequential`` skeletons plus explicit, seeded parameter dicts.

A network is split into an architecture (an ``nn.Sequential`` built exactly as the
homework prescribes) and its parameters (a plain ``dict[str, Tensor]``). The
architecture is applied to any parameter dict with ``torch.func.functional_call``, so
gradients, Jacobians and vmapped ensembles need no module state at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .checks import check_positive_int, check_seed
from .config import NetworkConfiguration
from .types import Params

NETWORK_TYPES = ("mlp", "cnn")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
POOLED_SIZE = (4, 4)  # AdaptiveMaxPool2d output before the dense head


def activation(name: str, argument: str = "activation_name") -> nn.Module:
    """The activation module for ``name`` ("relu", "tanh" or "sigmoid"); an error names
    ``argument``."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise ValueError(
            f"{argument} must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        ) from None


CONV_FIELDS = ("n_channels", "kernel_sizes", "strides", "paddings")  # what only a CNN reads


def validate_config(config: NetworkConfiguration, conv: bool = True) -> NetworkConfiguration:
    """Check that every field is a tuple and each size a positive int, the conv tuples of
    equal lengths and at least one conv layer; ``conv=False`` (an MLP, which reads ``dense_hiddens`` alone, as the
    homework says) leaves the conv tuples' contents unchecked."""
    if not isinstance(config, tuple) or len(config) != len(NetworkConfiguration._fields):
        raise TypeError(f"net_config must be a NetworkConfiguration, got {config!r}")
    config = NetworkConfiguration(*config)
    for field in NetworkConfiguration._fields:
        if not isinstance(getattr(config, field), (tuple, list)):
            raise TypeError(
                f"net_config.{field} must be a tuple of ints, got {getattr(config, field)!r}"
            )
    if conv and not config.n_channels:
        raise ValueError("net_config.n_channels must name at least one conv layer for a CNN")
    lengths = {f: len(getattr(config, f)) for f in CONV_FIELDS}
    if conv and len(set(lengths.values())) > 1:
        raise ValueError(
            "net_config: n_channels, kernel_sizes, strides and paddings must have the "
            f"same length, got lengths {lengths}"
        )
    for field in NetworkConfiguration._fields if conv else ("dense_hiddens",):
        minimum = 0 if field == "paddings" else 1
        for i, v in enumerate(getattr(config, field)):
            check_positive_int(f"net_config.{field}[{i}]", v, minimum=minimum)
    return config


def mlp(input_dim: int, config: NetworkConfiguration, n_classes: int,
        act: nn.Module) -> nn.Sequential:
    """Flatten -> [Linear -> act] per ``dense_hiddens`` -> Linear -> Softmax(dim=1)."""
    check_positive_int("input_dim", input_dim)
    check_positive_int("n_classes", n_classes)
    config = validate_config(config, conv=False)
    return nn.Sequential(nn.Flatten(), *_dense_head(input_dim, config.dense_hiddens, n_classes, act))


def cnn(in_channels: int, config: NetworkConfiguration, n_classes: int,
        act: nn.Module) -> nn.Sequential:
    """[Conv2d -> act -> MaxPool2d(2)] per conv layer (no pool after the last), then
    AdaptiveMaxPool2d((4, 4)) -> Flatten -> dense hidden layers -> Linear -> Softmax."""
    check_positive_int("in_channels", in_channels)
    check_positive_int("n_classes", n_classes)
    config = validate_config(config)
    layers: List[nn.Module] = []
    channels = in_channels
    n_conv = len(config.n_channels)
    for i, (c, k, s, p) in enumerate(zip(*config[:4])):
        layers += [nn.Conv2d(channels, c, kernel_size=k, stride=s, padding=p), act]
        if i < n_conv - 1:
            layers.append(nn.MaxPool2d(kernel_size=2))
        channels = c
    layers += [nn.AdaptiveMaxPool2d(POOLED_SIZE), nn.Flatten()]
    flat = channels * POOLED_SIZE[0] * POOLED_SIZE[1]
    return nn.Sequential(*layers, *_dense_head(flat, config.dense_hiddens, n_classes, act))


def _dense_head(width: int, hiddens: Sequence[int], n_classes: int, act: nn.Module) -> List[nn.Module]:
    layers: List[nn.Module] = []
    for h in hiddens:
        layers += [nn.Linear(width, h), act]
        width = h
    return layers + [nn.Linear(width, n_classes), nn.Softmax(dim=1)]


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis: ``(size + 2 padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def feature_map_sizes(config: NetworkConfiguration, input_hw: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Spatial size after each conv layer's (conv, pool) pair, for an ``(H, W)`` input.

    Raises ``ValueError`` naming the layer when a kernel, stride or pool leaves an
    empty feature map.
    """
    config = validate_config(config)
    h, w = input_hw
    sizes = []
    n_conv = len(config.n_channels)
    for i, (k, s, p) in enumerate(zip(config.kernel_sizes, config.strides, config.paddings)):
        if k > h + 2 * p or k > w + 2 * p:
            raise ValueError(
                f"net_config: conv layer {i} has kernel_size {k} but its input feature map "
                f"is {h}x{w} (padding {p}); the kernel must fit inside it"
            )
        h, w = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
        if i < n_conv - 1:
            if h < 2 or w < 2:
                raise ValueError(
                    f"net_config: conv layer {i} outputs a {h}x{w} feature map, too small for "
                    "the 2x2 max-pool that follows it"
                )
            h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


def count_parameters(network_type: str, config: NetworkConfiguration = NetworkConfiguration(),
                     input_shape: Tuple[int, int, int] = (1, 28, 28), n_classes: int = 10) -> int:
    """Number of learnable scalars, computed from the configuration alone.

    Equals ``sum(p.numel() for p in build_network(...).module.parameters())``, and refuses
    what ``build_network`` refuses.
    """
    config = validate_config(config, conv=network_type == "cnn")
    c, h, w = _checked_shapes(network_type, input_shape, n_classes)
    total = 0
    if network_type == "cnn":
        feature_map_sizes(config, (h, w))
        for out_c, k in zip(config.n_channels, config.kernel_sizes):
            total += out_c * (c * k * k + 1)
            c = out_c
        width = c * POOLED_SIZE[0] * POOLED_SIZE[1]
    elif network_type == "mlp":
        width = c * h * w
    else:
        raise ValueError(f"network_type must be one of {NETWORK_TYPES}, got {network_type!r}")
    for out in (*config.dense_hiddens, n_classes):
        total += out * (width + 1)
        width = out
    return total


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` if it is a real floating ``torch.dtype``, else ``TypeError`` naming it."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating dtype such as torch.float32, got {dtype!r}")
    return dtype


def init_params(module: nn.Module, generator: Union[torch.Generator, int] = 0,
                dtype: torch.dtype = torch.float32) -> Params:
    """Fresh parameters for ``module``'s Linear/Conv2d layers, drawn from ``generator``.

    Same distribution as PyTorch's default initialisation: weight and bias both
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = in_features * prod(kernel)``.
    An int in ``[0, 2**32)`` is taken as the seed of a new CPU generator.
    """
    check_dtype(dtype)
    if not isinstance(generator, torch.Generator):
        generator = torch.Generator().manual_seed(check_seed("seed", generator))
    params: Params = {}
    for name, p in module.named_parameters():
        owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        fan_in = owner.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        params[name] = torch.empty(p.shape, dtype=dtype).uniform_(-bound, bound, generator=generator)
    return params


def params_of(module: nn.Module) -> Params:
    """A detached copy of ``module``'s parameters as a plain dict."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@dataclass(frozen=True)
class Network:
    """An architecture to apply to parameter dicts.

    ``module`` is a parameter-free skeleton (built on the meta device): it only says
    what to compute. ``apply(params, x) = functional_call(module, params, (x,))`` maps
    ``x: (N, C, H, W) float`` to class probabilities ``(N, n_classes)``, always: a
    faster form for compiled steps is chosen explicitly
    (:func:`fn_trainer.speed.cnn_forward.inductor_apply`).
    """

    module: nn.Module
    network_type: str
    input_shape: Tuple[int, int, int]
    n_classes: int

    def __post_init__(self) -> None:
        # Each parameter's name and shape, as ``init`` makes them; computed here, not lazily,
        # as torch.compile cannot trace functools.cached_property's lock.
        object.__setattr__(self, "param_shapes", {k: v.shape for k, v in self.module.named_parameters()})

    def apply(self, params: Params, x: Tensor) -> Tensor:
        self.check_input(x, params)
        return functional_call(self.module, params, (x,))

    def check_input(self, x: Tensor, params: object) -> None:
        """Raise naming ``params`` unless they are this network's (names, shapes, one floating
        dtype), and naming ``x`` unless it is a floating ``(N, *input_shape)`` tensor of the
        parameters' dtype and on their (first one's) device. Caught here, a mistake reads as such
        rather than as a matmul or conv shape error."""
        problem = self.params_problem(params)
        if problem is not None:
            raise ValueError(f"params do not fit this network: {problem}")
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape (N, {', '.join(map(str, self.input_shape))}) for this network "
                f"(input_shape={self.input_shape}), got {tuple(x.shape)}"
            )
        weight = next(iter(params.values()))
        if x.dtype != weight.dtype:
            raise TypeError(f"x must have the parameters' floating dtype ({weight.dtype}), got {x.dtype}")
        if x.device != weight.device:
            raise ValueError(f"x must be on the parameters' device ({weight.device}), got {x.device}")

    def params_problem(self, params: Any) -> Optional[str]:
        """What keeps ``params`` from being this network's parameters, or ``None``.

        Names, shapes, dtypes and devices only (metadata: no host sync), so ``apply`` checks every
        call: ``functional_call`` would otherwise take a missing name from the parameter-free
        skeleton, and a wrong shape or a mixed dtype would surface as a bare matmul or conv
        error.
        """
        shapes = self.param_shapes
        if not isinstance(params, dict):
            return f"expected a dict of tensors, got {type(params).__name__}"
        if params.keys() != shapes.keys():
            missing, unexpected = sorted(shapes.keys() - params.keys()), sorted(params.keys() - shapes.keys())
            return f"missing {missing}, unexpected {unexpected}"
        for k, shape in shapes.items():
            v = params[k]
            if not isinstance(v, Tensor) or v.shape != shape:
                found = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                return f"params[{k!r}] must have shape {tuple(shape)}, got {found}"
        dtypes = {v.dtype for v in params.values()}
        if len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
            return "params must share one floating dtype, got " + ", ".join(f"{k} {v.dtype}" for k, v in params.items())
        if len({v.device for v in params.values()}) > 1:
            return "params must share one device, got " + ", ".join(f"{k} {v.device}" for k, v in params.items())
        return None

    def init(self, seed: Union[torch.Generator, int] = 0, dtype: torch.dtype = torch.float32) -> Params:
        return init_params(self.module, seed, dtype)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def _checked_shapes(network_type: Any, input_shape: Any, n_classes: Any) -> Tuple[int, int, int]:
    """``(C, H, W)`` of ``input_shape``, or an error naming what ``build_network`` refuses."""
    if network_type not in NETWORK_TYPES:
        raise ValueError(f"network_type must be one of {NETWORK_TYPES}, got {network_type!r}")
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    # one class: the softmax is always 1, its loss 0, and nothing is learnt
    check_positive_int("n_classes", n_classes, minimum=2)
    return tuple(check_positive_int(f"input_shape[{i}]", v) for i, v in enumerate(input_shape))


def build_network(network_type: str = "mlp", config: NetworkConfiguration = NetworkConfiguration(),
                  *, input_shape: Tuple[int, int, int] = (1, 28, 28), n_classes: int = 10,
                  activation_name: str = "relu") -> Network:
    """Build the homework's MLP or CNN for inputs of shape ``input_shape = (C, H, W)``,
    with ``n_classes >= 2`` outputs."""
    c, h, w = _checked_shapes(network_type, input_shape, n_classes)
    act = activation(activation_name)
    with torch.device("meta"):
        if network_type == "mlp":
            module = mlp(c * h * w, config, n_classes, act)
        else:
            feature_map_sizes(config, (h, w))
            module = cnn(c, config, n_classes, act)
    return Network(module, network_type, (c, h, w), n_classes)
