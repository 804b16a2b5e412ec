"""The homework's questions (section 1, 35 points) as checks against ``fn_trainer``.

Each question has parts; each part has points, a Hypothesis strategy of inputs and a
comparison. The grader draws the inputs, sends them to the submission's process
(``probe``), and compares the answer here, with the reference computed in this process
from ``fn_trainer``. Hypothesis runs derandomised (every submission gets the same
examples), with at most ``EXAMPLES`` examples per part, no deadline and no database; a
failing part reports its shrunk counterexample.

Tolerances, each stated where it is used: ``ATOL``/``RTOL`` for values computed the same
way in float32 (|got - want| <= ATOL + RTOL * |want|), ``GRAD_RTOL`` where the order of
float32 operations may differ (gradients, Adam steps).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.func import functional_call, grad_and_value

from ...core.config import NetworkConfiguration
from ...core.data import IMAGE_SIZE, standardizer
from ...core.diagnostics import global_norm, gradient_norm, jacobian_norm
from ...core.evaluate import make_evaluate
from ...core.losses import EPSILON, accuracy, cross_entropy
from ...core.networks import activation, build_network, cnn, count_parameters, feature_map_sizes, mlp
from ...core.optim import adam
from ...core.step import make_objective
from .functions import ELEMENTWISE, SCALAR_FUNCTIONS, TENSOR_FUNCTIONS
from .interface import differences
from .layers import describe_layers, recipe

EXAMPLES = 12
ATOL, RTOL = 1e-6, 1e-5
GRAD_RTOL = 1e-4
SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink), verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False)


class Mismatch(AssertionError):
    """A part failed on one example; the message says what to fix, for the student."""


class Part(NamedTuple):
    title: str
    points: int
    strategy: st.SearchStrategy
    check: Callable[["Ask", Any], None]  # raises Mismatch
    explicit: Sequence[Any] = ()


class Question(NamedTuple):
    number: str
    title: str
    parts: Sequence[Part]

    @property
    def points(self) -> int:
        return sum(p.points for p in self.parts)


Ask = Callable[..., Any]  # ask(op, what, **inputs) -> the submission's answer


def run_part(part: Part, ask: Ask) -> Optional[str]:
    """``None`` if ``part`` holds on every example, else why not (shrunk counterexample).
    ``SubmissionFailed`` propagates."""

    def test(case):
        part.check(ask, case)

    for case in part.explicit:
        test = example(case)(test)
    run = SETTINGS(given(part.strategy)(test))
    try:
        run()
    except Mismatch as e:
        return str(e)
    return None


# ---- helpers ----

def randn(seed: int, shape, scale: float = 1.0) -> Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)) * scale


def close(got: float, want: float, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)


def tensors_close(got: Tensor, want: Tensor, rtol: float = RTOL, atol: float = ATOL) -> bool:
    return got.shape == want.shape and bool(torch.isclose(got.double(), want.double(), rtol, atol).all())


def parallel(got: Dict[str, Tensor], want: Dict[str, Tensor]) -> bool:
    """Whether the gradients ``got`` (a tensor of each of ``want``'s names and shapes) are
    ``want`` at some positive scale: scaled to ``want``'s norm, every entry within
    ``GRAD_RTOL`` of it (``tensors_close``). A loss summed instead of averaged still has the
    gradient of the batch's loss."""
    a = torch.cat([got[k].double().flatten() for k in want])
    b = torch.cat([want[k].double().flatten() for k in want])
    if not bool(torch.isfinite(a).all()) or not a.norm() > 0:
        return False
    return tensors_close(a * (b.norm() / a.norm()), b, GRAD_RTOL)


def worst(got: Tensor, want: Tensor) -> str:
    """Where two same-shaped tensors differ most, in words."""
    if got.shape != want.shape:
        return f"got shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    diff = (got.double() - want.double()).abs().nan_to_num(float("inf"))
    i = int(diff.flatten().argmax())
    index = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), got.shape))
    return f"at index {index} got {float(got.flatten()[i]):.6g}, expected {float(want.flatten()[i]):.6g}"


seeds = st.integers(0, 2 ** 16)
activations = st.sampled_from(["relu", "tanh", "sigmoid"])


# ---- questions 1 and 2: gradient_norm, jacobian_norm ----

def gradient_cases(counts):
    return st.fixed_dictionaries({"function": st.sampled_from(sorted(SCALAR_FUNCTIONS)), "count": counts,
                                  "shape": st.lists(st.integers(1, 4), min_size=1, max_size=2), "seed": seeds})


def check_gradient_norm(ask: Ask, case) -> None:
    tensors = [randn(case["seed"] + i, case["shape"]) for i in range(case["count"])]
    want = float(gradient_norm(SCALAR_FUNCTIONS[case["function"]], *tensors))
    call = f"gradient_norm({case['function']}, {case['count']} tensor(s) of shape {tuple(case['shape'])})"
    got = ask("gradient_norm", call, function=case["function"], tensors=tensors)
    if not close(got, want, GRAD_RTOL):
        raise Mismatch(f"{call} returned {got:.6g}, expected {want:.6g}, the Euclidean norm of the gradient "
                       f"with respect to all the tensors together (tolerance {GRAD_RTOL:g} relative)")


def jacobian_cases(names, min_numel: int = 1):
    """``min_numel=2`` for the functions that mix entries: ``differences`` of one entry is
    empty, a case the homework never asks for and ``torch.autograd.functional.jacobian``
    cannot take."""
    shapes = st.lists(st.integers(1, 4), min_size=1, max_size=2).filter(lambda shape: math.prod(shape) >= min_numel)
    return st.fixed_dictionaries({"function": st.sampled_from(names), "seed": seeds, "shape": shapes})


def check_jacobian_norm(ask: Ask, case) -> None:
    x = randn(case["seed"], case["shape"])
    f = TENSOR_FUNCTIONS[case["function"]]
    want = float(jacobian_norm(f, x))
    call = f"jacobian_norm({case['function']}, a tensor of shape {tuple(case['shape'])})"
    got = ask("jacobian_norm", call, function=case["function"], x=x)
    if not close(got, want, GRAD_RTOL):
        raise Mismatch(f"{call} returned {got:.6g}, expected {want:.6g}, the Frobenius norm of the whole "
                       f"Jacobian (every output with respect to every input; tolerance {GRAD_RTOL:g} relative)")


# ---- question 3: the activation ----

def check_activation(ask: Ask, case) -> None:
    name, seed = case
    x = randn(seed, (3, 4), 3.0)
    want = activation(name)(x)
    got = ask("activation", f'create_activation_function("{name}")', name=name, x=x)
    if not tensors_close(got, want):
        raise Mismatch(f'create_activation_function("{name}") gives a module that computes a different '
                       f"function: {worst(got, want)} (tolerance {ATOL:g} + {RTOL:g} relative)")


# ---- questions 4 and 5: create_mlp, create_cnn ----

def mlp_cases():
    return st.fixed_dictionaries({
        "input_shape": st.tuples(st.integers(1, 2), st.integers(2, 4), st.integers(2, 4)),
        "config": st.fixed_dictionaries({"dense_hiddens": st.lists(st.integers(1, 6), max_size=3).map(tuple)}),
        "n_classes": st.integers(2, 6), "activation": activations, "seed": seeds})


def _valid_cnn(case) -> bool:
    try:
        feature_map_sizes(NetworkConfiguration(**case["config"]), case["input_shape"][1:])
        return True
    except ValueError:
        return False


@st.composite
def cnn_cases(draw):
    n_conv = draw(st.integers(1, 3))
    layers = st.lists(st.integers(1, 3), min_size=n_conv, max_size=n_conv).map(tuple)
    size = draw(st.integers(6, 12))
    return {
        "input_shape": (draw(st.integers(1, 2)), size, size),
        "config": {"n_channels": draw(layers), "kernel_sizes": draw(layers),
                   "strides": draw(st.lists(st.integers(1, 2), min_size=n_conv, max_size=n_conv).map(tuple)),
                   "paddings": draw(st.lists(st.integers(0, 1), min_size=n_conv, max_size=n_conv).map(tuple)),
                   "dense_hiddens": draw(st.lists(st.integers(1, 5), max_size=2).map(tuple))},
        "n_classes": draw(st.integers(2, 5)), "activation": draw(activations), "seed": draw(seeds)}


def build_call(kind: str, case) -> str:
    c, h, w = case["input_shape"]
    first = c * h * w if kind == "mlp" else c
    fields = ", ".join(f"{k}={v}" for k, v in case["config"].items())
    return f"create_{kind}({first}, NetworkConfiguration({fields}), {case['n_classes']}, {case['activation']})"


def reference_module(kind: str, case, device: str = "cpu") -> torch.nn.Module:
    c, h, w = case["input_shape"]
    config = NetworkConfiguration(**case["config"])
    act = activation(case["activation"])
    with torch.device(device):
        if kind == "mlp":
            return mlp(c * h * w, config, case["n_classes"], act)
        return cnn(c, config, case["n_classes"], act)


def ask_build(ask: Ask, kind: str, case):
    c, h, w = case["input_shape"]
    x = randn(case["seed"], (2, c, h, w))
    answer = ask("build", build_call(kind, case), type=kind, first=c * h * w if kind == "mlp" else c,
                 config=case["config"], n_classes=case["n_classes"],
                 activation_class=type(activation(case["activation"])).__name__, x=x)
    return x, answer


CHECKED_BY_OUTPUT = ("Flatten(", "Softmax(", "Identity(")  # layer kinds left to ``check_forward``


def structural(layers: List[str]) -> List[str]:
    """``describe_layers``' list without the layers a network may equally write in its
    ``forward`` (``x.flatten(1)``, ``torch.softmax``) or that do nothing (``Identity``):
    whether those are right shows in the output, which ``check_forward`` compares."""
    return [layer for layer in layers if not layer.startswith(CHECKED_BY_OUTPUT)]


def check_layers(kind: str, ask: Ask, case) -> None:
    _, answer = ask_build(ask, kind, case)
    want = structural(describe_layers(reference_module(kind, case, "meta")))
    got = structural(answer["layers"])
    for i, (g, w) in enumerate(zip(got + [None] * len(want), want + [None] * len(got))):
        if g != w:
            raise Mismatch(
                f"{build_call(kind, case)}: weighted, activation and pooling layer {i} is {g or 'missing'}, "
                f"expected {w or 'no further layer'}. Expected: {', '.join(want)} (Flatten and Softmax are "
                "checked through the network's output)")


def check_count(kind: str, ask: Ask, case) -> None:
    _, answer = ask_build(ask, kind, case)
    want = count_parameters(kind, NetworkConfiguration(**case["config"]), case["input_shape"], case["n_classes"])
    if answer["n_params"] != want:
        raise Mismatch(f"{build_call(kind, case)} has {answer['n_params']} parameters, expected {want}")


def check_forward(kind: str, ask: Ask, case) -> None:
    x, answer = ask_build(ask, kind, case)
    call = build_call(kind, case)
    if "error" in answer["output"]:
        raise Mismatch(f"{call}: the network fails on images of shape {tuple(x.shape)}: {answer['output']['error']}")
    reference = reference_module(kind, case)
    names = [n for n, _ in reference.named_parameters()]
    shapes = [tuple(t.shape) for t in answer["weights"]]
    want_shapes = [tuple(p.shape) for p in reference.parameters()]
    if shapes != want_shapes:
        raise Mismatch(f"{call}: the weights and biases have shapes {shapes}, expected {want_shapes}")
    with torch.no_grad():
        want = functional_call(reference, dict(zip(names, answer["weights"])), (x,))
    got = answer["output"]["value"]
    if not tensors_close(got, want):
        raise Mismatch(f"{call}: with its own weights, the network's output on images of shape {tuple(x.shape)} "
                       f"differs from the homework's architecture: {worst(got, want)} (tolerance {ATOL:g} + "
                       f"{RTOL:g} relative; the output should be softmax probabilities)")


# ---- question 6: normalize ----

def normalize_cases():
    """Images of the homework's shape: a submission may rightly assume 1 x 28 x 28."""
    return st.fixed_dictionaries({"n": st.integers(3, 8), "shape": st.just(IMAGE_SIZE), "seed": seeds})


def check_normalize(which: str, ask: Ask, case) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    splits = [(torch.rand((n, 1, *case["shape"]), generator=g) * 255, torch.randint(0, 10, (n,), generator=g))
              for n in (case["n"], 3, 4)]
    call = f"normalize(train, valid, test) with {case['n']} training images of shape (1, {case['shape'][0]}, {case['shape'][1]})"
    got = ask("normalize", call, splits=splits)
    mean, _ = standardizer(splits[0][0])
    scales = {"n - 1": splits[0][0].std(0), "n": splits[0][0].std(0, correction=0)}
    names = ("train",) if which == "train" else ("valid", "test")
    for index, name in enumerate(("train", "valid", "test")):
        if name not in names:
            continue
        X = splits[index][0]
        if not any(tensors_close(got[index][0], (X - mean) / s, 1e-4, 1e-4) for s in scales.values()):
            raise Mismatch(f"{call}: the {name} images are not (X - mean) / std with the training set's feature-wise "
                           f"mean and standard deviation: {worst(got[index][0], (X - mean) / scales['n - 1'])} "
                           "(tolerance 1e-4 + 1e-4 relative; either std, over n or n - 1, is accepted)")
        if not torch.equal(got[index][1], splits[index][1]):
            raise Mismatch(f"{call}: the {name} labels changed; only the images are normalised")


# ---- question 7: one_hot ----

def check_one_hot(ask: Ask, case) -> None:
    n_classes, labels = case
    y = torch.tensor(labels, dtype=torch.int64)
    want = torch.nn.functional.one_hot(y, n_classes).float()
    call = f"one_hot(torch.tensor({labels})) with n_classes = {n_classes}"
    got = ask("one_hot", call, n_classes=n_classes, y=y)
    if got.shape != want.shape:
        raise Mismatch(f"{call} returned a tensor of shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.equal(got.double(), want.double()):
        raise Mismatch(f"{call} returned {got.tolist()}, expected {want.int().tolist()}")


one_hot_cases = st.integers(2, 10).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), min_size=1, max_size=8)))


# ---- questions 8-11: the Trainer's methods, on the grader's own network ----

class NetworkCase(NamedTuple):
    """A small MLP of the grader's with seeded parameters, and data for it."""

    spec: Dict[str, Any]
    apply: Callable[[Dict[str, Tensor], Tensor], Tensor]
    X: Tensor
    labels: Tensor

    @property
    def params(self) -> Dict[str, Tensor]:
        return self.spec["params"]

    @property
    def Y(self) -> Tensor:
        return torch.nn.functional.one_hot(self.labels, self.spec["n_classes"]).float()


def network_case(seed: int, n: int, n_classes: int = 4, hidden: int = 5, sharpness: float = 1.0) -> NetworkCase:
    """``sharpness`` scales the output layer: at 300 some probabilities are exactly 0."""
    config = NetworkConfiguration(dense_hiddens=(hidden,))
    net = build_network("mlp", config, input_shape=(1, 2, 3), n_classes=n_classes, activation_name="tanh")
    params = net.init(seed)
    last = list(params)[-2:]
    params.update({k: params[k] * sharpness for k in last})
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn((n, 1, 2, 3), generator=g) * 2
    labels = torch.randint(0, n_classes, (n,), generator=g)
    spec = {"type": "mlp", "input_shape": (1, 2, 3), "config": {"dense_hiddens": (hidden,)},
            "n_classes": n_classes, "activation": "tanh", "params": params, "layers": recipe(net.module)}
    return NetworkCase(spec, net.apply, X, labels)


def loss_cases(sharpness: float):
    return st.fixed_dictionaries({"seed": seeds, "n": st.integers(1, 8), "sharpness": st.just(sharpness),
                                  "epsilon": st.sampled_from([EPSILON, 1e-6, 1e-3]) if sharpness > 1
                                  else st.just(EPSILON)})


def ask_loss(ask: Ask, case):
    net = network_case(case["seed"], case["n"], sharpness=case["sharpness"])
    call = (f"compute_loss_and_accuracy(X, y) on a batch of {case['n']} with epsilon = {case['epsilon']:g}"
            + (" (some probabilities are exactly 0)" if case["sharpness"] > 1 else ""))
    answer = ask("loss_and_accuracy", call, network=net.spec, X=net.X, Y=net.Y, epsilon=case["epsilon"])
    loss = partial(cross_entropy, eps=case["epsilon"])
    return net, call, answer, loss


def value_of(answer: Dict[str, Any], key: str, call: str) -> float:
    """One value of an answer whose values come each on its own (``{"value": v}`` or
    ``{"error": why}``, as ``probe.attempt`` gives them), or ``Mismatch`` saying why not."""
    if "error" in answer[key]:
        raise Mismatch(f"{call}: {answer[key]['error']}")
    return answer[key]["value"]


def check_loss_value(ask: Ask, case) -> None:
    net, call, answer, loss = ask_loss(ask, case)
    probs = net.apply(net.params, net.X)
    want = float(loss(probs, net.Y))
    got = value_of(answer, "loss", call)
    if not close(got, want):
        fixed = case["epsilon"] != EPSILON and close(got, float(cross_entropy(probs, net.Y, eps=EPSILON)))
        raise Mismatch(f"{call}: the loss is {got:.6g}, expected {want:.6g}, the mean over the batch of "
                       f"-sum_c y_c log(clip(p_c, epsilon, 1 - epsilon)) (tolerance {ATOL:g} + {RTOL:g} relative)"
                       + (f"; {got:.6g} is the loss clipped at {EPSILON:g}: read the clip's bound from self.epsilon, "
                          "which the grader sets" if fixed else ""))


def check_accuracy(ask: Ask, case) -> None:
    net, call, answer, _ = ask_loss(ask, case)
    want = float(accuracy(net.apply(net.params, net.X), net.Y))
    got = value_of(answer, "accuracy", call)
    if not close(got, want, 0.0):
        raise Mismatch(f"{call}: the accuracy is {got:.6g}, expected {want:.6g}, the fraction of "
                       f"rows whose largest probability is at the label (tolerance {ATOL:g})")


def check_graph(ask: Ask, case) -> None:
    net, call, answer, loss = ask_loss(ask, case)
    if "error" in answer["gradients"]:
        raise Mismatch(f"{call}: loss.backward() failed: {answer['gradients']['error']}. The loss must keep its "
                       "graph: don't detach it or call .item() on it")
    want, _ = grad_and_value(make_objective(net.apply, loss))(net.params, net.X, net.Y)
    got = answer["gradients"]["value"]
    for name, w in want.items():
        if got[name] is None or got[name].shape != w.shape:
            raise Mismatch(f"{call}: after loss.backward(), the gradient of {name} is "
                           f"{'missing' if got[name] is None else worst(got[name], w)}")
    # the loss's value is the other parts' to grade: a summed loss keeps its graph as well
    if not parallel(got, want):
        name, w = max(want.items(), key=lambda item: float((got[item[0]].double() - item[1].double()).abs().max()))
        raise Mismatch(f"{call}: after loss.backward(), the gradients are not those of the batch's loss at any "
                       f"scale: {name} {worst(got[name], w)} (tolerance {ATOL:g} + {GRAD_RTOL:g} relative, once "
                       "scaled to the expected gradient's norm)")


def check_network_gradient_norm(ask: Ask, case) -> None:
    net = network_case(case["seed"], 1, hidden=case["hidden"])
    grads = {k: randn(case["seed"] + 7, v.shape) for k, v in net.params.items()}
    want = float(global_norm(grads))
    call = f"compute_gradient_norm(network) for a network with {len(grads)} parameter tensors"
    got = ask("network_gradient_norm", call, network=net.spec, grads=grads)
    if not close(got, want):
        raise Mismatch(f"{call} returned {got:.6g}, expected {want:.6g}, the norm of all the parameters' .grad "
                       f"buffers flattened together (tolerance {ATOL:g} + {RTOL:g} relative)")


step_cases = st.fixed_dictionaries({"seed": seeds, "sizes": st.tuples(st.integers(1, 6), st.integers(1, 6)),
                                    "lr": st.sampled_from([1e-2, 3e-3, 1e-4])})


def batch_gradient(net: NetworkCase) -> Callable:
    """``(params, X, Y) -> (grads, loss)``: the gradient of the template's loss on a batch."""
    return grad_and_value(make_objective(net.apply, partial(cross_entropy, eps=EPSILON)))


def reference_steps(case):
    """The grader's network, two batches, and what two Adam steps give: per step the
    gradient (and its norm) and the parameters after it."""
    net = network_case(case["seed"], sum(case["sizes"]))
    batches = [(net.X[:case["sizes"][0]], net.Y[:case["sizes"][0]]),
               (net.X[case["sizes"][0]:], net.Y[case["sizes"][0]:])]
    gradient = batch_gradient(net)
    opt = adam(case["lr"])
    params, state, steps = net.params, opt.init(net.params), []
    for X, Y in batches:
        grads, _ = gradient(params, X, Y)
        params, state = opt.update(grads, state, params)
        steps.append({"norm": float(global_norm(grads)), "grads": grads, "params": params})
    return net, batches, steps


def ask_steps(ask: Ask, case):
    """The submission's two ``training_step`` calls: ``(call, got, want, net, batches)``,
    ``want`` and the rest as ``reference_steps`` gives them."""
    net, batches, want = reference_steps(case)
    call = (f"two training_step calls (batches of {case['sizes'][0]} and {case['sizes'][1]}) with "
            f"lr = {case['lr']:g}")
    got = ask("training_step", call, network=net.spec, lr=case["lr"], batches=batches)
    return call, got, want, net, batches


def norms_to_return(net: NetworkCase, batches, want, got) -> List[Tuple[float, str]]:
    """Per ``training_step`` call, the gradient norm it should return and where it is
    taken: the second call's at the parameters the submission's first call left, so that
    a wrong update (question 10's other parts) does not also make a right norm wrong."""
    norms = [(want[0]["norm"], "the norm of the loss's gradient on that batch")]
    left = got[0]["params"]
    usable = (isinstance(left, dict) and left.keys() == net.params.keys()
              and all(isinstance(left[k], Tensor) and left[k].shape == p.shape and bool(torch.isfinite(left[k]).all())
                      for k, p in net.params.items()))
    if usable:
        grads, _ = batch_gradient(net)({k: left[k].to(p.dtype) for k, p in net.params.items()}, *batches[1])
        norms.append((float(global_norm(grads)), "the norm of the loss's gradient on that batch at the parameters "
                                                 "the first call left"))
    else:
        norms.append((want[1]["norm"], "the norm of the loss's gradient on that batch"))
    return norms


def own_norm(step: Dict[str, Any]) -> Optional[float]:
    """The submission's ``compute_gradient_norm`` of the ``.grad`` buffers a ``training_step``
    call left (``None`` where it failed): a returned norm equal to it is that function's
    answer, right or wrong, which question 9 grades."""
    value = step.get("own_norm")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_step_norm(ask: Ask, case) -> None:
    call, got, want, net, batches = ask_steps(ask, case)
    for i, (norm, what) in enumerate(norms_to_return(net, batches, want, got)):
        grads = got[i]["grads"]
        buffers_right = (all(g is not None for g in grads.values())
                         and close(float(global_norm(grads)), norm, GRAD_RTOL))
        own = own_norm(got[i])
        if buffers_right and own is not None and close(got[i]["norm"], own):
            continue  # the right gradient, measured by the submission's own compute_gradient_norm
        if not close(got[i]["norm"], norm, GRAD_RTOL):
            raise Mismatch(f"{call}: call {i + 1} returned {got[i]['norm']:.6g}, expected {norm:.6g}, {what} "
                           f"(tolerance {ATOL:g} + {GRAD_RTOL:g} relative)")


def check_step_grad_buffers(ask: Ask, case) -> None:
    call, got, want, _, _ = ask_steps(ask, case)
    grads = got[0]["grads"]
    if all(g is None or not torch.any(g) for g in grads.values()):
        # zero_grad() after the update, which the homework allows: nothing is left to compare,
        # so the returned norm must be the reference's (a stub returning 0.0 is not)
        if not close(got[0]["norm"], want[0]["norm"], GRAD_RTOL):
            raise Mismatch(f"{call}: the first call cleared the .grad buffers and returned {got[0]['norm']:.6g}, "
                           f"not the norm of the gradient on that batch, {want[0]['norm']:.6g}")
        return
    if any(g is None for g in grads.values()):
        raise Mismatch(f"{call}: after the first call some parameters have no .grad; the returned norm should be "
                       "the norm of the gradients left in the .grad buffers")
    reference = want[0]["grads"]
    if grads.keys() != reference.keys() or any(grads[k].shape != w.shape for k, w in reference.items()) \
            or not parallel(grads, reference):
        raise Mismatch(f"{call}: after the first call the .grad buffers do not hold the gradient of the batch's "
                       "loss (at any scale), so the norm it returns is not the norm of that gradient")
    norm, own = float(global_norm(grads)), own_norm(got[0])
    if not close(got[0]["norm"], norm) and not (own is not None and close(got[0]["norm"], own)):
        raise Mismatch(f"{call}: the first call returned {got[0]['norm']:.6g} but the .grad buffers it leaves have "
                       f"norm {norm:.6g} (tolerance {ATOL:g} + {RTOL:g} relative)")


def check_adam(step: int, ask: Ask, case) -> None:
    call, got, want, _, _ = ask_steps(ask, case)
    atol = 1e-3 * case["lr"] + 1e-7  # a thousandth of one Adam update, and float32 rounding
    for name, w in want[step]["params"].items():
        g = got[step]["params"][name]
        if not tensors_close(g, w, 0.0, atol):
            raise Mismatch(f"{call}: after call {step + 1}, {name} is not what torch.optim.Adam(lr={case['lr']:g}) "
                           f"gives from the same state{' (the moments of the first step carry over)' if step else ''}: "
                           f"{worst(g, w)} (tolerance {atol:.3g}, a thousandth of lr)")


eval_cases = st.fixed_dictionaries({"seed": seeds, "n": st.integers(9, 30), "batch_size": st.integers(4, 8)})


def ask_evaluate(ask: Ask, case):
    net = network_case(case["seed"], case["n"])
    call = f"evaluate(X, y) on {case['n']} samples with batch_size = {case['batch_size']}"
    got = ask("evaluate", call, network=net.spec, X=net.X, Y=net.Y, y=net.labels, batch_size=case["batch_size"])
    want = make_evaluate(net.apply, partial(cross_entropy, eps=EPSILON))(net.params, net.X, net.Y)
    return net, call, got, want


def check_evaluate(which: int, ask: Ask, case) -> None:
    _, call, got, want = ask_evaluate(ask, case)
    key = ("loss", "accuracy")[which]
    value = value_of(got, key, f"{call} (y as {got['targets']})")
    if not close(value, want[which]):
        raise Mismatch(f"{call} (y as {got['targets']}): the {key} is {value:.6g}, expected {want[which]:.6g}, "
                       f"the average over all {case['n']} samples (tolerance {ATOL:g} + {RTOL:g} relative)")


def check_evaluate_leaves_network(ask: Ask, case) -> None:
    net, call, got, want = ask_evaluate(ask, case)
    for name, p in net.params.items():
        if not torch.equal(got["params"][name], p):
            raise Mismatch(f"{call} changed the network's {name}: evaluating must not train")
    # an evaluate that never runs the network leaves it unchanged too: not a point by itself.
    # It ran if it called the network, or if it returned a value only the network gives.
    right = [close(got[key]["value"], w) for key, w in zip(("loss", "accuracy"), want) if "value" in got[key]]
    if not (got["ran_network"] or any(right)):
        raise Mismatch(f"{call} neither called the network nor returned its loss ({want[0]:.6g}) or its accuracy "
                       f"({want[1]:.6g}), so whether it evaluates the network without changing it is not shown")


# ---- the interface (0 points) ----

def interface_report(ask: Ask) -> str:
    notes = differences(ask("interface", "reading the interface"))
    if not notes:
        return "Every name, signature, default and @staticmethod matches the template."
    return "Differences from the template (no points depend on them):\n- " + "\n- ".join(notes)


QUESTIONS: List[Question] = [
    Question("1", "gradient_norm", [
        Part("one tensor", 1, gradient_cases(st.just(1)), check_gradient_norm),
        Part("several tensors together", 2, gradient_cases(st.integers(2, 3)), check_gradient_norm,
             [{"function": "sum_of_products", "count": 2, "shape": [3], "seed": 0}]),
    ]),
    Question("2", "jacobian_norm", [
        Part("entry-wise functions", 1, jacobian_cases(list(ELEMENTWISE)), check_jacobian_norm),
        Part("functions that mix entries or change the shape", 1,
             jacobian_cases(sorted(set(TENSOR_FUNCTIONS) - set(ELEMENTWISE)), min_numel=2), check_jacobian_norm,
             [{"function": "cumulative_sum", "shape": [3], "seed": 0}]),
    ]),
    Question("3", "create_activation_function", [
        Part("relu, tanh and sigmoid", 1, st.tuples(activations, seeds), check_activation,
             [("relu", 0), ("tanh", 0), ("sigmoid", 0)]),
    ]),
    Question("4", "create_mlp", [
        Part("layers: Linear + activation per hidden layer, then Linear", 2, mlp_cases(),
             partial(check_layers, "mlp")),
        Part("parameter count", 1, mlp_cases(), partial(check_count, "mlp")),
        Part("output on un-flattened images", 2, mlp_cases(), partial(check_forward, "mlp")),
    ]),
    Question("5", "create_cnn", [
        Part("layers: Conv2d + activation (+ MaxPool2d(2) but after the last), AdaptiveMaxPool2d((4, 4)), "
             "dense head", 2, cnn_cases().filter(_valid_cnn), partial(check_layers, "cnn")),
        Part("parameter count", 1, cnn_cases().filter(_valid_cnn), partial(check_count, "cnn")),
        Part("output on images", 2, cnn_cases().filter(_valid_cnn), partial(check_forward, "cnn")),
    ]),
    Question("6", "normalize", [
        Part("the training set, with its own feature-wise statistics", 1, normalize_cases(),
             partial(check_normalize, "train")),
        Part("validation and test sets, with the training set's statistics", 1, normalize_cases(),
             partial(check_normalize, "other")),
    ]),
    Question("7", "one_hot", [
        Part("the homework's example", 1, st.just((5, [1, 0, 3, 4])), check_one_hot),
        Part("any labels and number of classes", 1, one_hot_cases, check_one_hot),
    ]),
    Question("8", "compute_loss_and_accuracy", [
        Part("the loss value", 1, loss_cases(1.0), check_loss_value),
        Part("probabilities clipped at epsilon", 1, loss_cases(300.0), check_loss_value),
        Part("the loss keeps its graph", 1, loss_cases(1.0), check_graph),
        Part("the accuracy", 1, loss_cases(1.0), check_accuracy),
    ]),
    Question("9", "compute_gradient_norm", [
        Part("the norm of the .grad buffers", 2,
             st.fixed_dictionaries({"seed": seeds, "hidden": st.integers(1, 5)}), check_network_gradient_norm),
    ]),
    Question("10", "training_step", [
        Part("returns the gradient norm of the batch's loss", 2, step_cases, check_step_norm),
        Part("the returned norm is the norm of the .grad buffers it leaves", 1, step_cases,
             check_step_grad_buffers),
        Part("one Adam step, as torch.optim.Adam", 2, step_cases, partial(check_adam, 0)),
        Part("a second step continues Adam's state", 1, step_cases, partial(check_adam, 1)),
    ]),
    Question("11", "evaluate", [
        Part("the average loss over the whole set", 1, eval_cases, partial(check_evaluate, 0)),
        Part("the accuracy over the whole set", 1, eval_cases, partial(check_evaluate, 1)),
        Part("leaves the network unchanged", 1, eval_cases, check_evaluate_leaves_network),
    ]),
]
TOTAL_POINTS = sum(q.points for q in QUESTIONS)
