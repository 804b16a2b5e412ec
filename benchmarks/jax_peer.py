"""The JAX peer: the same training in JAX and optax, for ``python -m benchmarks.epoch --jax``.

The homework's ``nn.Sequential`` is translated layer by layer into a JAX function of the
same parameter dict (``"0.weight"``, ``"0.bias"``, ...), the loss is the project's
clipped cross-entropy on the softmax output, the optimizer ``optax.adam`` with
``torch.optim.Adam``'s defaults, and every step returns the loss, the accuracy and the
gradient norm as the functional step does. Two paths, as JAX users write them:

- ``jax_jit``: the whole step under ``jax.jit``, one call per minibatch;
- ``jax_scan``: ``lax.scan`` over ``scan_steps`` minibatches per call (the largest
  divisor of the full minibatches up to ``MAX_SCAN_STEPS``; the 468 full minibatches of
  an epoch give 9 calls of 52), a last partial minibatch by the jitted step.

Both start from the parameters the torch paths start from and read the same minibatches,
already cut into device arrays before timing (JAX slices by dispatching an operation).
Needs ``pip install -e ".[peers]"``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from jax import lax
from torch import nn

from fn_trainer.core.losses import EPSILON
from fn_trainer.core.step import Params

MAX_SCAN_STEPS = 52
JaxApply = Callable[[Dict[str, jax.Array], jax.Array], jax.Array]


def to_jax(params: Params) -> Dict[str, jax.Array]:
    return {name: jnp.asarray(p.detach().numpy()) for name, p in params.items()}


def to_torch(params: Dict[str, jax.Array]) -> Params:
    return {name: torch.from_numpy(np.array(p)) for name, p in params.items()}


def _max_pool2(x: jax.Array) -> jax.Array:
    """``MaxPool2d(2)`` on ``(N, C, H, W)`` as a reshape and a maximum (odd edges dropped)."""
    n, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _adaptive_max_pool(x: jax.Array, size: Tuple[int, int]) -> jax.Array:
    """``AdaptiveMaxPool2d(size)``: bin ``i`` of ``n`` over a side ``L`` spans
    ``[floor(i L / n), ceil((i + 1) L / n))``, as torch's."""
    def bins(length: int, n: int) -> List[Tuple[int, int]]:
        return [(i * length // n, -(-(i + 1) * length // n)) for i in range(n)]

    rows = [jnp.stack([x[:, :, a:b, c:d].max(axis=(2, 3)) for c, d in bins(x.shape[3], size[1])], -1)
            for a, b in bins(x.shape[2], size[0])]
    return jnp.stack(rows, -2)


def _layer(name: str, layer: nn.Module) -> Callable[[Dict[str, jax.Array], jax.Array], jax.Array]:
    """One layer of the homework's networks as ``(params, x) -> y``."""
    if isinstance(layer, nn.Linear):
        return lambda p, x: x @ p[f"{name}.weight"].T + p[f"{name}.bias"]
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.dilation == (1, 1) \
            and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple):
        stride, padding = layer.stride, [(q, q) for q in layer.padding]
        return lambda p, x: lax.conv_general_dilated(x, p[f"{name}.weight"], stride, padding,
                                                     dimension_numbers=("NCHW", "OIHW", "NCHW")
                                                     ) + p[f"{name}.bias"][None, :, None, None]
    if isinstance(layer, nn.ReLU):
        return lambda p, x: jax.nn.relu(x)
    if isinstance(layer, nn.MaxPool2d) and layer.kernel_size in (2, (2, 2)) and layer.stride in (2, (2, 2)) \
            and layer.padding in (0, (0, 0)) and not layer.ceil_mode:
        return lambda p, x: _max_pool2(x)
    if isinstance(layer, nn.AdaptiveMaxPool2d):
        size = layer.output_size if isinstance(layer.output_size, tuple) else (layer.output_size,) * 2
        return lambda p, x: _adaptive_max_pool(x, size)
    if isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1:
        return lambda p, x: x.reshape(x.shape[0], -1)
    if isinstance(layer, nn.Softmax) and layer.dim == 1:
        return lambda p, x: jax.nn.softmax(x, axis=1)
    raise ValueError(f"layer {name} ({layer}) has no JAX translation here")


def jax_apply(module: nn.Sequential) -> JaxApply:
    """``module``'s forward as a JAX function of its parameter dict."""
    # every layer in order, a shared one (the networks reuse one activation module) each time
    layers = [_layer(name, layer) for name, layer in module.named_modules(remove_duplicate=False)
              if name and "." not in name]

    def apply(params: Dict[str, jax.Array], x: jax.Array) -> jax.Array:
        for layer in layers:
            x = layer(params, x)
        return x

    return apply


def make_scan_step(apply: JaxApply, lr: float):
    """``optax.adam(lr)`` and a step ``((params, opt_state), (x, targets)) -> (carry, metrics)``
    in ``lax.scan``'s form; the loss is ``fn_trainer.cross_entropy``'s."""
    optimizer = optax.adam(lr)  # b1 0.9, b2 0.999, eps 1e-8 outside the square root: torch's Adam

    def loss(params, x, targets):
        probs = apply(params, x)
        return -(targets * jnp.log(jnp.clip(probs, EPSILON, 1.0 - EPSILON))).sum(-1).mean(), probs

    def step(carry, batch):
        params, opt_state = carry
        x, targets = batch
        (value, probs), grads = jax.value_and_grad(loss, has_aux=True)(params, x, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": value, "accuracy": (probs.argmax(-1) == targets.argmax(-1)).mean(),
                   "grad_norm": optax.global_norm(grads)}
        return (optax.apply_updates(params, updates), opt_state), metrics

    return optimizer, step


def scan_steps(n_full: int) -> int:
    """Minibatches per ``lax.scan`` call: the largest divisor of ``n_full`` up to ``MAX_SCAN_STEPS``."""
    return max(d for d in range(1, min(n_full, MAX_SCAN_STEPS) + 1) if n_full % d == 0)


def jax_paths(module: nn.Sequential, params: Params, lr: float, X: torch.Tensor, T: torch.Tensor,
              batch_size: int, n_steps: int, scan: bool = True) -> Dict[str, Callable[[], Params]]:
    """``jax_jit`` and (if ``scan``) ``jax_scan``: ``n_steps`` minibatches of ``(X, one-hot T)``
    from ``params``, each path returning the parameters it reached (as torch tensors)."""
    optimizer, step = make_scan_step(jax_apply(module), lr)
    jitted = jax.jit(step)
    scanned = jax.jit(lambda carry, xs, ts: lax.scan(step, carry, (xs, ts)))
    n_steps = min(n_steps, math.ceil(X.shape[0] / batch_size))
    n_full = min(n_steps, X.shape[0] // batch_size)
    Xj, Tj = jnp.asarray(X.numpy()), jnp.asarray(T.numpy())
    batches = [(Xj[b * batch_size:(b + 1) * batch_size], Tj[b * batch_size:(b + 1) * batch_size])
               for b in range(n_steps)]
    per_call = scan_steps(n_full) if n_full else 1
    # a second copy of the data, in scan chunks: made only for the scan path
    chunks = [(Xj[:n_full * batch_size].reshape(-1, per_call, batch_size, *X.shape[1:])[c],
               Tj[:n_full * batch_size].reshape(-1, per_call, batch_size, T.shape[1])[c])
              for c in range(n_full // per_call)] if scan else []
    start = to_jax(params)

    def path(scan: bool) -> Callable[[], Params]:
        state = {"carry": (start, optimizer.init(start))}

        def run() -> Params:
            carry, metrics = state["carry"], None
            if scan:
                for xs, ts in chunks:
                    carry, metrics = scanned(carry, xs, ts)
            for x, t in batches[n_full if scan else 0:]:
                carry, metrics = jitted(carry, (x, t))
            jax.block_until_ready(metrics)
            state["carry"] = carry
            return to_torch(carry[0])

        return run

    return {"jax_jit": path(False), **({"jax_scan": path(True)} if scan else {})}
