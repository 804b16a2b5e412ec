"""Epoch times: the template's object-oriented loop against the functional paths.

    python -m benchmarks.epoch [--smoke] [--reps 5] [--device cuda] [--json results.json]

In ONE process, on synthetic data of Fashion-MNIST shape (60000 images 1x28x28, raw
0-255 values, 469 minibatches of 128), the paths of each shape are timed in turn,
repetition after repetition (alternating, so load changes hit them alike); the
figure is the median over repetitions of the time of one epoch of training steps
(per-epoch evaluation excluded on every path). With ``--cnn-steps`` below 469 the
CNN times that many steps and scales to 469 (said in the output). Compile warm-up
(first calls, compilation included) is timed separately. Each shape's matmul floor is
the ratio a path would reach doing the shape's matrix-product FLOPs (``train_flops``) at
the measured fp32 matmul peak and nothing else: a target below it takes fewer FLOPs
(Winograd, for the CNN's second layer), not faster code.

Paths: ``reference`` (the template's loop, ``benchmarks.reference``), ``compat`` (the
compat ``Trainer.training_step``, what students and graders run), ``compiled_reference``
(the peer: the template's loop with the module and the optimizer step under
``torch.compile``, what a PyTorch user tries first; "to peer" is each path's ratio to it)
and the functional ones. With ``--jax``, the MLP and the CNN are also trained in JAX +
optax (``benchmarks.jax_peer``: ``jax_jit``, the step under ``jax.jit``; ``jax_scan``,
``lax.scan`` over many steps per call). The MLP shapes also time ``products``: the
step's matrix products alone, for every member, with nothing else (``benchmarks.products``):
a step doing those products in those shapes gets no lower. The sweep and the populations
also train their members apart, one after another with the one-model step (``in_turn_eager``
and ``in_turn_compiled``, the latter compiled as ``fn-trainer`` compiles a run alone): the
time of the vmapped step against theirs is what training the members together is worth.

Every training path starts from the same parameters (``network.init(0)``, copied into the
reference's module too) and repeats the same minibatches, so every training path of a
shape does the same work: each records ``final_loss``, the cross-entropy of its parameters after
its last repetition on the first minibatch (for the sweep, one per model), which agree
up to float32 rounding; ``initial_loss`` is the same before training.

Shapes: the MLP 784-256-256-10; the CNN (16, 32, 45), kernel 3, dense (256, 256);
the 6-run sweep (3 learning rates x raw/normalised inputs, MLP): six sequential
reference epochs against one vmapped epoch of the six models; the populations of 8 MLPs
and 4 CNNs (seeds 0..K-1, what ``--seeds K`` trains): K sequential reference epochs
against one vmapped epoch of the K members. For the CNN,
``compiled_module`` compiles the step around the homework's module as it is
(``functional_call``), without the forward of ``fn_trainer.speed.inductor_apply`` that
``compiled`` uses: the difference is what that rewrite is worth.

glibc's malloc thresholds are fixed for the run (:func:`steady_malloc`; off with
``--default-malloc``), the same for every path: left adaptive, they made the reference
CNN's epoch time jump between two modes. ``--flush-denormals`` flushes subnormal floats
to zero on every path, as the ``fn-trainer`` command does (``fn_trainer.speed.denormals``): the
ratios stay like for like, and the absolute times are those of training with the command.

``--device cuda`` runs every path on the GPU (data, parameters and the reference's
module), each timed run ending when the GPU is done (``torch.cuda.synchronize``). TF32
is off for cuDNN's convolutions as for matrix products, so that every path computes in
float32 as on the CPU. The matmul peak is the GPU's; the products floor is left out, and
the targets, stated for CPUs, are printed as not evaluated.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple, TypeVar

import torch
from torch.func import functional_call, vmap

from fn_trainer import NetworkConfiguration, adam, build_network, cross_entropy, make_step, normalize, one_hot
from fn_trainer.core.networks import POOLED_SIZE, Network, conv_output_size, feature_map_sizes
from fn_trainer.core.optim import exp_log_power
from fn_trainer.core.step import Params, Step
from fn_trainer.core.trees import stack_trees, tree_to
from fn_trainer.core.types import Batch
from fn_trainer.speed import inductor_apply
from fn_trainer.speed.denormals import flush_denormals
from fn_trainer.speed.malloc import steady_malloc
from fn_trainer.training.compiled import compile_step
from fn_trainer.training.population import Member, MemberData, init_population, make_population_step

from .products import dense_products, products_loop
from .reference import CompiledReferenceTrainer, ReferenceTrainer
from .report_file import checked_json_path, exit_status, write_report

T_ = TypeVar("T_")
CPU = torch.device("cpu")
N_TRAIN = 60000
SWEEP_LRS = (1e-2, 1e-4, 1e-8)  # the homework's learning rates, each raw and normalised
SWEEP_INPUTS = (0, 0, 0, 1, 1, 1)  # per sweep model: raw (0) or normalised (1) inputs
TARGETS = {"mlp": 0.45, "cnn": 0.4, "sweep": 0.5,  # best functional / reference, at most
           "population_mlp": 0.3, "population_cnn": 0.45}
POPULATION_SIZES = {"population_mlp": 8, "population_cnn": 4}  # members, seeds 0..K-1, lr 1e-3
JAX_PATHS = ("jax_jit", "jax_scan")  # with --jax (benchmarks.jax_peer)
PRODUCTS = "products"  # the MLP step's matrix products alone (benchmarks.products): a floor, no training
IN_TURN_PATHS = ("in_turn_eager", "in_turn_compiled")  # a population's members trained apart (in_turn_paths)
# not candidates for "best": the peers, the products floor, and the members trained apart
# (a population shape's target is for one vmapped step of them all)
NOT_CANDIDATES = ("reference", "compat", "compiled_reference", PRODUCTS, *JAX_PATHS, *IN_TURN_PATHS)
REPS, CNN_STEPS = 5, 94  # the defaults of --reps and --cnn-steps (None when not given: --smoke refuses them)
COMPAT_TARGET = 1.0  # the compat Trainer's training_step / reference, at most (MLP and CNN)
MLP_CONFIG = NetworkConfiguration()
CNN_CONFIG = NetworkConfiguration(n_channels=(16, 32, 45), kernel_sizes=(3, 3, 3))
SMOKE_MLP = NetworkConfiguration(dense_hiddens=(32,))
SMOKE_CNN = NetworkConfiguration(n_channels=(4, 8), kernel_sizes=(3, 3), strides=(1, 1), paddings=(0, 0),
                                 dense_hiddens=(16,))


def synthetic_data(n: int, seed: int = 0):
    """``(X, y)``: ``X (n, 1, 28, 28)`` float32 in [0, 255] with a class-dependent band, ``y (n,)``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    X = torch.rand(n, 1, 28, 28, generator=g) * 60
    X[torch.arange(n), 0, 2 * y + 4, 4:24] += 150
    return X, y


def train_flops(network_type: str, config: NetworkConfiguration, n_samples: int) -> float:
    """Multiply-add FLOPs of training on ``n_samples``: ``2 * n * (3 * macs - macs_first)``.

    Forward, weight gradient and input gradient each cost the layer's multiply-adds,
    except that the first layer needs no input gradient. Pooling, activations and the
    optimizer are not counted (they are not matmul work).
    """
    macs: List[int] = []
    if network_type == "cnn":
        c, (h, w) = 1, (28, 28)
        sizes = feature_map_sizes(config, (h, w))
        for i, (out_c, k, s, p) in enumerate(zip(*config[:4])):
            oh, ow = conv_output_size(h, k, s, p), conv_output_size(w, k, s, p)
            macs.append(out_c * c * k * k * oh * ow)
            c, (h, w) = out_c, sizes[i]
        width = c * POOLED_SIZE[0] * POOLED_SIZE[1]
    else:
        width = 28 * 28
    for out in (*config.dense_hiddens, 10):
        macs.append(width * out)
        width = out
    return 2.0 * n_samples * (3 * sum(macs) - macs[0])


def matmul_peak(seconds: float = 1.0, size: int = 1024, device: torch.device = CPU) -> float:
    """Best fp32 GFLOP/s of a ``size``-square matmul (``4 * size`` on a GPU) on ``device``
    over ``seconds`` of tries."""
    if device.type == "cuda":  # a GPU needs larger products, and more of them, to reach its peak
        size, products = 4 * size, 32
    else:
        products = 4
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(products):
            a @ b
        synchronize(device)
        best = max(best, products * 2 * size ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a GPU runs it after the call returns)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T_]) -> Tuple[float, T_]:
    """Seconds ``fn()`` took, and what it returned."""
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def finished_on(device: torch.device, run: Callable[[], T_]) -> Callable[[], T_]:
    """``run`` returning only once ``device`` has done the work it queued, so that a timed
    run counts it."""

    def finished() -> T_:
        value = run()
        synchronize(device)
        return value

    return finished


def functional_loop(step, state: Dict, batch_of: Callable[[int], tuple], n_steps: int) -> Callable[[], Params]:
    """``fit``'s inner loop: ``n_steps`` steps, metrics kept as tensors, one sync at the end;
    returns the parameters reached."""

    step = getattr(step, "in_place", step)  # a donating step overwrites the loop's own state, as in fit

    def run() -> Params:
        params, opt_state = state["params"], state["opt_state"]
        metrics = None
        for b in range(n_steps):
            params, opt_state, metrics = step(params, opt_state, batch_of(b))
        state["params"], state["opt_state"] = params, opt_state
        float(metrics["grad_norm"].sum())
        return params

    return run


def module_params(module: torch.nn.Module) -> Params:
    """A module's parameters as a detached ``dict[str, Tensor]``, named as ``functional_call`` takes them."""
    return {name: p.detach() for name, p in module.named_parameters()}


def device_of(params: Params) -> torch.device:
    return next(iter(params.values())).device


def reference_trainer(network_type: str, config: NetworkConfiguration, lr: float, params: Params,
                      trainer: type = ReferenceTrainer) -> ReferenceTrainer:
    """The template's trainer (or ``CompiledReferenceTrainer``), its module started from
    ``params`` (the functional paths' start) on their device."""
    ref = trainer(network_type, config, lr=lr)
    ref.network.to(device_of(params))  # in place: the optimizer keeps the module's parameters
    ref.network.load_state_dict(params)
    return ref


def sweep_inputs(X, y) -> List[torch.Tensor]:
    """The sweep's two training inputs: ``X`` raw and normalised (training-set statistics)."""
    (Xn, _), _, _ = normalize((X, y), (X[:2], y[:2]), (X[:2], y[:2]))
    return [X, Xn]


def network_type(shape: str) -> str:
    """The network a shape trains: the sweep trains MLPs, ``population_<type>`` its type."""
    return {"sweep": "mlp"}.get(shape, shape.rpartition("_")[2])


def population(shape: str) -> Tuple[List[Member], List[int]]:
    """The members of a population shape and, per member, its input (0 raw, 1 normalised).

    The sweep: every learning rate on raw, then on normalised inputs, all from seed 0.
    ``population_<type>``: ``POPULATION_SIZES[shape]`` members of seeds 0, 1, ... at lr 1e-3
    on raw inputs, as ``--seeds K`` trains one configuration.
    """
    if shape == "sweep":
        return [Member(0, lr) for lr in SWEEP_LRS * 2], list(SWEEP_INPUTS)
    K = POPULATION_SIZES[shape]
    return [Member(seed, 1e-3) for seed in range(K)], [0] * K


def start_params(shape: str, config: NetworkConfiguration, device: torch.device = CPU) -> Params:
    """Where every path of ``shape`` starts, on ``device``: ``network.init(0)``, or the
    members' initial parameters stacked for a population shape."""
    net = build_network(network_type(shape), config)
    return tree_to(net.init(0) if shape in ("mlp", "cnn") else init_population(net, population(shape)[0])[0],
                   device)


def first_batch_loss(shape: str, config: NetworkConfiguration, X, y, T,
                     batch_size: int) -> Callable[[Params], object]:
    """``params -> loss`` on the first minibatch: ``-mean_i sum_c t_ic log p_ic`` (float).

    For a population shape, ``params`` are the members stacked (leading axis K), each
    scored on its own inputs (raw or normalised): a list of K floats.
    """
    net = build_network(network_type(shape), config)
    t = T[:batch_size]
    if shape in ("mlp", "cnn"):
        x = X[:batch_size]
        return lambda params: float(cross_entropy(net.apply(params, x), t))
    xs = torch.stack([inputs[:batch_size] for inputs in sweep_inputs(X, y)])[population(shape)[1]]
    per_model = vmap(lambda p, x: cross_entropy(net.apply(p, x), t))
    return lambda params: per_model(params, xs).tolist()


def compat_trainer(network_type: str, config: NetworkConfiguration, lr: float, params: Params):
    """The compat ``Trainer``, put together as the template's ``__init__`` does (network
    from its builders, ``FunctionalAdam``, ``epsilon``), its module started from
    ``params``, but without reading a data set: the benchmark's data is in memory."""
    from compat import solution  # importing it seeds the global generators, as the template does

    trainer = solution.Trainer.__new__(solution.Trainer)
    act = solution.Trainer.create_activation_function("relu")
    trainer.network = (solution.Trainer.create_mlp(28 * 28, config, 10, act) if network_type == "mlp"
                       else solution.Trainer.create_cnn(1, config, 10, act)).to(device_of(params))
    trainer.network.load_state_dict(params)
    trainer.optimizer = solution.FunctionalAdam(trainer.network.parameters(), lr=lr)
    trainer.n_classes, trainer.lr, trainer.epsilon = 10, lr, solution.EPSILON
    return trainer


def compat_loop(trainer, X, T, batch_size: int, n_steps: int) -> Callable[[], Params]:
    """``trainer.training_step`` over the first ``n_steps`` minibatches of ``(X, one-hot T)``;
    returns the parameters."""
    trainer.batch_size = batch_size

    def run() -> Params:
        trainer.network.train()
        for b in range(min(n_steps, math.ceil(X.shape[0] / batch_size))):
            idx = slice(b * batch_size, (b + 1) * batch_size)
            trainer.training_step(X[idx], T[idx])
        return module_params(trainer.network)

    return run


def minibatch_of(X: torch.Tensor, T: torch.Tensor, batch_size: int) -> Callable[[int], Batch]:
    """``b -> (x, targets)``: minibatch ``b`` of ``X`` and ``T`` in their order."""
    return lambda b: (X[b * batch_size:(b + 1) * batch_size], T[b * batch_size:(b + 1) * batch_size])


def one_model_steps(net: Network, compile: bool) -> Dict[str, Step]:
    """The one-model steps the functional paths time: ``eager``, ``make_step(net.apply,
    adam())``, and if ``compile`` the step as ``fn-trainer`` compiles a run's (``compiled``:
    ``inductor_apply`` as the forward, Adam's powers as Inductor computes them once per
    step, donated state, the eager step for a minibatch of another shape)."""
    eager = make_step(net.apply, adam(1e-3))
    steps = {"eager": eager}
    if compile:
        steps["compiled"] = compile_step(make_step(inductor_apply(net), adam(1e-3, power=exp_log_power)),
                                         eager=eager, guard_closures=False, donate=True)
    return steps


def network_paths(network_type: str, config: NetworkConfiguration, X, T, batch_size: int, n_steps: int,
                  compile: bool, peer: bool, jax: bool = False) -> Dict[str, Callable[[], Params]]:
    """Every path of one network, on ``X``'s device."""
    net = build_network(network_type, config)
    start = tree_to(net.init(0), X.device)
    batch_of = minibatch_of(X, T, batch_size)

    def train_loop(trainer: ReferenceTrainer) -> Callable[[], Params]:
        def run() -> Params:
            trainer.train_steps(X, T, batch_size, n_steps)
            return module_params(trainer.network)
        return run

    paths = {"reference": train_loop(reference_trainer(network_type, config, 1e-3, start)),
             "compat": compat_loop(compat_trainer(network_type, config, 1e-3, start), X, T, batch_size, n_steps)}
    if peer:  # the template's loop as PyTorch users first compile it
        paths["compiled_reference"] = train_loop(
            reference_trainer(network_type, config, 1e-3, start, CompiledReferenceTrainer))
    if jax:  # the same training in JAX + optax (imported only when asked for: an optional dependency)
        from .jax_peer import jax_paths
        # the CNN under lax.scan took 3 times as long as under jax.jit (71 against 24 s an epoch,
        # 2-core AMD EPYC): left out, it would take most of the benchmark's time
        paths.update(jax_paths(net.module, net.init(0), 1e-3, X, T, batch_size, n_steps,
                               scan=network_type == "mlp"))
    candidates = list(one_model_steps(net, compile).items())
    if compile and network_type == "cnn":
        module_apply = lambda p, x: functional_call(net.module, p, (x,))  # noqa: E731
        compiled_adam = adam(1e-3, power=exp_log_power)  # as one_model_steps compiles the functional step
        candidates.append(("compiled_module", compile_step(make_step(module_apply, compiled_adam),
                                                             guard_closures=False)))
    for name, s in candidates:
        params = tree_to(net.init(0), X.device)
        paths[name] = functional_loop(s, {"params": params, "opt_state": adam(1e-3).init(params)},
                                      batch_of, n_steps)
    return paths


def population_data(shape: str, X, y, T) -> Tuple[List[Member], MemberData]:
    """A population shape's members and the data they read: each member's inputs raw or
    normalised (``population``), the targets ``T`` shared."""
    members, inputs = population(shape)
    datasets = sweep_inputs(X, y) if 1 in inputs else [X]
    return members, MemberData([(Xd, T) for Xd in datasets], inputs)


def population_paths(shape: str, config: NetworkConfiguration, X, y, T, batch_size: int, n_steps: int,
                     compile: bool) -> Dict[str, Callable[[], Params]]:
    """The members one after another in the template's loop (``reference``) against one
    vmapped step of all of them, eager and compiled (with ``inductor_apply`` as its forward),
    and against the members one after another with the one-model step (``in_turn_paths``)."""
    kind = network_type(shape)
    members, data = population_data(shape, X, y, T)
    net = build_network(kind, config)
    inputs = [data.member(k)[0] for k in range(len(members))]
    return {"reference": sequential_reference(kind, config, members, inputs, T, batch_size, n_steps),
            **vmapped_paths(net, members, data, batch_size, n_steps, compile),
            **in_turn_paths(net, members, data, batch_size, n_steps, compile)}


def sequential_reference(kind: str, config: NetworkConfiguration, members: List[Member], inputs: List[torch.Tensor],
                         T: torch.Tensor, batch_size: int, n_steps: int) -> Callable[[], Params]:
    """The members one after another in the template's loop, member k from
    ``net.init(seed_k)`` on ``inputs[k]``; the members' parameters stacked."""
    net = build_network(kind, config)
    refs = [(reference_trainer(kind, config, m.lr, tree_to(net.init(m.seed), Xk.device)), Xk)
            for m, Xk in zip(members, inputs)]

    def run() -> Params:
        for trainer, Xk in refs:
            trainer.train_steps(Xk, T, batch_size, n_steps)
        return stack_trees([module_params(trainer.network) for trainer, _ in refs])

    return run


def vmapped_paths(net: Network, members: List[Member], data: MemberData, batch_size: int, n_steps: int,
                  compile: bool) -> Dict[str, Callable[[], Params]]:
    """``members`` trained on ``data`` in one vmapped step, eager (``vmapped_eager``) and, if
    ``compile``, compiled with ``inductor_apply(net, vmapped=True)`` as its forward
    (``vmapped_compiled``); each from ``init_population(net, members)`` on the data's device."""

    def batch_of(b):
        return data.rows(slice(b * batch_size, (b + 1) * batch_size))

    paths = {}
    for name, flag in (("vmapped_eager", False), ("vmapped_compiled", True)):
        if flag and not compile:
            continue
        params, state = tree_to(init_population(net, members), data.X.device)
        step = make_population_step(net, data.in_dims(one_order=True), compile=flag,
                                    compiled_apply=inductor_apply(net, vmapped=True) if flag else None)
        paths[name] = functional_loop(step,
                                      {"params": params, "opt_state": state}, batch_of, n_steps)
    return paths


def in_turn_paths(net: Network, members: List[Member], data: MemberData, batch_size: int, n_steps: int,
                  compile: bool) -> Dict[str, Callable[[], Params]]:
    """``members`` trained one after another, each its epoch, by the one-model steps of
    ``one_model_steps`` (``in_turn_eager``; ``in_turn_compiled``: one graph serving every
    member), as ``fit`` trains a run alone: member k from ``net.init(seed_k)`` with its own
    Adam state on its own data. What one vmapped step of all members is worth is its time
    against these; the members' parameters are returned stacked, as the vmapped paths return
    them."""
    paths = {}
    for kind, step in one_model_steps(net, compile).items():
        loops = []
        for k, member in enumerate(members):
            X_k, T_k = data.member(k)
            params = tree_to(net.init(member.seed), X_k.device)
            loops.append(functional_loop(step, {"params": params, "opt_state": member.optimizer_state(params)},
                                         minibatch_of(X_k, T_k, batch_size), n_steps))
        paths[f"in_turn_{kind}"] = lambda loops=loops: stack_trees([loop() for loop in loops])
    return paths


def against_in_turn(timings: Dict[str, Dict]) -> Dict[str, Dict[str, object]]:
    """For each kind (``eager``, ``compiled``) whose vmapped and in-turn paths were both
    timed: the vmapped path's median epoch over the in-turn path's (``ratio``), and the
    median and range of their ratios round by round (``ratio_paired``,
    ``ratio_paired_range``: the machine's speed can change between rounds)."""
    out: Dict[str, Dict[str, object]] = {}
    for kind in ("eager", "compiled"):
        vmapped, apart = timings.get(f"vmapped_{kind}"), timings.get(f"in_turn_{kind}")
        if vmapped is None or apart is None:
            continue
        paired = [v / a for v, a in zip(vmapped["epoch_s"], apart["epoch_s"])]
        out[kind] = {"ratio": round(vmapped["median_s"] / apart["median_s"], 3),
                     "ratio_paired": round(statistics.median(paired), 3),
                     "ratio_paired_range": [round(min(paired), 3), round(max(paired), 3)]}
    return out


def measure(paths: Dict[str, Callable[[], Params]], reps: int, scale: float, log,
            loss: Callable[[Params], object], baseline: str = "reference",
            before: Callable[[], None] = lambda: None) -> Dict[str, Dict]:
    """Warm every path once (timed: compile warm-up), then ``reps`` alternating rounds, each
    starting one path later than the round before (no path always runs after the same one);
    ``ratio`` is each path's median over ``baseline``'s, ``ratio_paired`` the median (and
    ``ratio_paired_range`` the range) of its per-round ratios to the baseline's epoch of the
    same round; ``final_loss`` is ``loss`` of the
    parameters each path reached last (``None`` for a path that trains nothing and returns
    ``None``: ``products``). ``before()`` runs, untimed, before each timed run."""
    out: Dict[str, Dict] = {}
    reached: Dict[str, Params] = {}
    for name, run in paths.items():
        before()
        warmup_s, reached[name] = timed(run)
        out[name] = {"warmup_s": round(warmup_s, 3), "epoch_s": []}
        log(f"  warm-up {name}: {out[name]['warmup_s']:.2f} s")
    names = list(paths)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = paths[name]
            before()
            seconds, reached[name] = timed(run)
            out[name]["epoch_s"].append(round(seconds * scale, 4))
        log(f"  rep {r + 1}/{reps}: " + ", ".join(f"{n} {v['epoch_s'][-1]:.3f}" for n, v in out.items()))
    ref = statistics.median(out[baseline]["epoch_s"])
    peer = statistics.median(out["compiled_reference"]["epoch_s"]) if "compiled_reference" in out else None
    with torch.no_grad():
        for name, v in out.items():
            v["median_s"] = statistics.median(v["epoch_s"])
            v["ratio"] = round(v["median_s"] / ref, 3)
            # round by round against the baseline's epoch of the same round: robust to drift between rounds
            paired = [e / b for e, b in zip(v["epoch_s"], out[baseline]["epoch_s"])]
            v["ratio_paired"] = round(statistics.median(paired), 3)
            v["ratio_paired_range"] = [round(min(paired), 3), round(max(paired), 3)]
            if peer is not None:
                v["ratio_to_compiled_reference"] = round(v["median_s"] / peer, 3)
            v["final_loss"] = None if reached[name] is None else loss(reached[name])
    return out


def machine(device: torch.device = CPU) -> Dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"cpu": cpu, **gpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.epoch", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, help=f"timed repetitions per path (median reported; default {REPS})")
    p.add_argument("--cnn-steps", type=int,
                   help=f"CNN steps timed per repetition, scaled to 469 (default {CNN_STEPS})")
    p.add_argument("--shapes", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled paths")
    p.add_argument("--smoke", action="store_true",
                   help="tiny run for CI: small networks, 512 samples, 2 steps, 1 repetition, "
                        "the MLP's functional compiled step the only path compiled (no peer)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda': where every path trains")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's adaptive malloc thresholds alone (noisier reference CNN times)")
    p.add_argument("--flush-denormals", action="store_true",
                   help="flush subnormal floats to zero on every path, as the fn-trainer command does "
                        "(fn_trainer.speed.denormals); the reference loop too (the CPU's arithmetic only)")
    p.add_argument("--jax", action="store_true",
                   help="also time the MLP and the CNN in JAX + optax, the step under jax.jit and lax.scan "
                        "over many steps per call (needs pip install -e '.[peers]')")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--check-targets", action="store_true", help="exit with status 1 if a target is missed")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    for name in ("reps", "cnn_steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is not None and args.threads > (os.cpu_count() or 1):
        p.error(f"--threads must be at most this machine's CPU count ({os.cpu_count()}), got {args.threads}")
    if args.smoke:  # its sizes are fixed, and its tiny networks say nothing about a target
        given = [f"--{name.replace('_', '-')}" for name in ("reps", "cnn_steps", "check_targets")
                 if getattr(args, name)]
        if given:
            p.error(f"--smoke runs 1 repetition of 2 steps of tiny networks and checks no target: "
                    f"{', '.join(given)} would have no effect")
    args.reps, args.cnn_steps = args.reps or REPS, args.cnn_steps or CNN_STEPS
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device must be 'cpu' or 'cuda', got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available on this machine")
    args.device = torch.device(args.device)
    if args.jax and args.device.type == "cuda":
        p.error("--jax times the peer on the CPU only; leave out --jax or --device cuda")
    if args.check_targets and args.device.type == "cuda":
        p.error("--check-targets: the targets are stated for CPUs; a --device cuda run checks none")
    if args.jax and (importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None):
        p.error("--jax needs jax and optax: pip install -e '.[peers]'")
    args.shapes = args.shapes.split(",")
    if not set(args.shapes) <= set(TARGETS):
        p.error(f"--shapes must be a subset of {sorted(TARGETS)}, got {args.shapes}")
    if len(set(args.shapes)) < len(args.shapes):
        p.error(f"--shapes names a shape twice: {','.join(args.shapes)}")
    args.json = checked_json_path(p, args.json)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = None if args.default_malloc else steady_malloc()
    if args.flush_denormals:
        flush_denormals(True)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    batch_size = 128
    n = 512 if args.smoke else N_TRAIN
    full_steps = math.ceil(n / batch_size)
    steps = {shape: 2 if args.smoke else (min(args.cnn_steps, full_steps) if network_type(shape) == "cnn"
                                          else full_steps) for shape in TARGETS}
    reps = 1 if args.smoke else args.reps
    configs = {"mlp": SMOKE_MLP if args.smoke else MLP_CONFIG, "cnn": SMOKE_CNN if args.smoke else CNN_CONFIG}
    configs = {shape: configs[network_type(shape)] for shape in TARGETS}
    if args.device.type == "cuda":  # float32 as on the CPU: no TF32 in convolutions (matmuls have none by default)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    X, y = (t.to(args.device) for t in synthetic_data(n))
    T = one_hot(y, 10)
    on_cpu = args.device.type == "cpu"
    peak_time = 0.2 if args.smoke else 2.0
    peak = matmul_peak(peak_time, device=args.device)
    load_before = os.getloadavg()
    results: Dict[str, Dict] = {}
    for shape in args.shapes:
        log(f"{shape}: {steps[shape]} steps per repetition" + (
            f", scaled to {full_steps}" if steps[shape] < full_steps else ""))
        # a smoke run compiles one path, the MLP's: compiled benchmark code runs, briefly
        compiled_paths = not args.no_compile and not (args.smoke and shape != "mlp")
        if shape not in ("mlp", "cnn"):
            paths = population_paths(shape, configs[shape], X, y, T, batch_size, steps[shape], compiled_paths)
        else:
            # the peer's compile (module and torch.optim.Adam's step) takes longer than a smoke run
            paths = network_paths(shape, configs[shape], X, T, batch_size, steps[shape], compiled_paths,
                                  peer=compiled_paths and not args.smoke, jax=args.jax)
        members = 1 if shape in ("mlp", "cnn") else len(population(shape)[0])
        if network_type(shape) == "mlp" and on_cpu:
            paths[PRODUCTS] = products_loop(dense_products(configs[shape], batch_size), members, steps[shape])
        scale = full_steps / steps[shape]
        loss = first_batch_loss(shape, configs[shape], X, y, T, batch_size)
        with torch.no_grad():
            initial_loss = loss(start_params(shape, configs[shape], args.device))
        timings = measure({name: finished_on(args.device, run) for name, run in paths.items()}, reps, scale, log,
                          loss)
        # one epoch of training FLOPs (all members for a population)
        flops = train_flops(network_type(shape), configs[shape], n) * members
        best = min((k for k in timings if k not in NOT_CANDIDATES), key=lambda k: timings[k]["median_s"])
        results[shape] = {
            "steps_timed": steps[shape], "steps_per_epoch": full_steps, "scaled": steps[shape] < full_steps,
            "gflop_per_epoch": round(flops / 1e9, 4), "initial_loss": initial_loss, "paths": timings, "best": best,
            "best_ratio": timings[best]["ratio"], "target_ratio": TARGETS[shape],
            # a smoke run's tiny networks say nothing about the targets, stated for CPUs
            "target_met": None if args.smoke or not on_cpu else timings[best]["ratio"] <= TARGETS[shape],
        }
        together = against_in_turn(timings)
        if together:
            results[shape]["vmapped_against_in_turn"] = together
        if "compat" in timings:
            results[shape]["compat_target_ratio"] = COMPAT_TARGET
            results[shape]["compat_target_met"] = (None if args.smoke or not on_cpu
                                                   else timings["compat"]["ratio"] <= COMPAT_TARGET)
    # measured again at the end: under load the first figure can be far below the machine's
    peak = max(peak, matmul_peak(peak_time, device=args.device))
    for r in results.values():
        for v in r["paths"].values():
            v["pct_of_matmul_peak"] = round(100 * r["gflop_per_epoch"] / v["median_s"] / peak, 1)
        # the ratio of a path doing the counted matmul FLOPs at the peak and nothing else
        r["matmul_floor_ratio"] = round(r["gflop_per_epoch"] / peak / r["paths"]["reference"]["median_s"], 3)
    report = {
        "command": "python -m benchmarks.epoch " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "median seconds per epoch of training steps (469 minibatches of 128, evaluation excluded), "
                "paths alternated within one process; ratio = path / reference",
        "smoke": args.smoke, "device": str(args.device), "reps": reps, "batch_size": batch_size, "n_train": n,
        "machine": machine(args.device), "malloc": malloc or "default", "flush_denormals": args.flush_denormals,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "matmul_peak_gflops": round(peak, 1), "results": results,
    }
    if args.json is not None:  # first: a table piped into a closed reader must not lose it
        write_report(args.json, report)
    print_table(report)
    missed = [s for s, r in results.items() if False in (r["target_met"], r.get("compat_target_met"))]
    return 1 if args.check_targets and missed else 0


def print_table(report: Dict) -> None:
    gpu = f"{report['machine']['gpu']}; " if "gpu" in report["machine"] else ""
    print(f"{report['command']}\n{gpu}{report['machine']['cpu']}, {report['machine']['torch_threads']} threads, "
          f"torch {report['machine']['torch']}; matmul peak {report['matmul_peak_gflops']} GFLOP/s; "
          f"load {report['load_average_before'][0]:.1f} -> {report['load_average_after'][0]:.1f}; "
          f"malloc {report['malloc']}; subnormals {'flushed' if report['flush_denormals'] else 'kept'}")
    print(f"{'shape':6} {'path':18} {'median s/epoch':>14} {'ratio':>6} {'to peer':>7} {'% peak':>7} {'warm-up s':>9} "
          f"{'paired ratio (range)':>21}")
    verdict = {True: "met", False: "missed",
               None: "not evaluated (" + ("smoke" if report["smoke"] else "a GPU; the targets are for CPUs") + ")"}
    for shape, r in report["results"].items():
        for name, v in r["paths"].items():
            to_peer = f"{v['ratio_to_compiled_reference']:7.2f}" if "ratio_to_compiled_reference" in v else f"{'-':>7}"
            low, high = v["ratio_paired_range"]
            print(f"{shape:6} {name:18} {v['median_s']:14.3f} {v['ratio']:6.2f} {to_peer} {v['pct_of_matmul_peak']:7.1f} "
                  f"{v['warmup_s']:9.2f} {v['ratio_paired']:6.2f} ({low:.2f}-{high:.2f})")
        print(f"{shape:6} target <= {r['target_ratio']}: best {r['best']} {r['best_ratio']:.2f} -> "
              f"{verdict[r['target_met']]}; matmul floor {r['matmul_floor_ratio']:.2f}"
              + (" (scaled from a fraction of an epoch)" if r["scaled"] else ""))
        timed_jax = [name for name in JAX_PATHS if name in r["paths"]]
        if timed_jax:
            fastest = min(timed_jax, key=lambda name: r["paths"][name]["median_s"])
            print(f"{shape:6} JAX's best: {fastest} {r['paths'][fastest]['ratio']:.2f}; {r['best']} takes "
                  f"{r['paths'][r['best']]['median_s'] / r['paths'][fastest]['median_s']:.2f} of its time")
        if "vmapped_against_in_turn" in r:
            print(f"{shape:6} one vmapped step against the members in turn: " + ", ".join(
                f"{kind} {v['ratio']:.2f} of the time (paired {v['ratio_paired']:.2f}, "
                f"{v['ratio_paired_range'][0]:.2f}-{v['ratio_paired_range'][1]:.2f})"
                for kind, v in r["vmapped_against_in_turn"].items()))
        if "compat_target_ratio" in r:
            print(f"{shape:6} compat target <= {r['compat_target_ratio']}: {r['paths']['compat']['ratio']:.2f} -> "
                  f"{verdict[r['compat_target_met']]}")


if __name__ == "__main__":
    sys.exit(exit_status(main, 'python -m benchmarks.epoch'))
