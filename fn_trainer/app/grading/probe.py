"""The submission's side of grading, run in its own interpreter:
``python -I path/to/probe.py FOLDER REQUEST_FD ANSWER_FD``.

It imports ``FOLDER/solution.py``, then answers requests until the grader closes the
request pipe. A request is a dict ``{"op": name, ...inputs}`` chosen by the grader; the
answer is what the submission's functions returned on those inputs, as plain values and
tensors. Nothing here judges an answer: the grader compares it with ``fn_trainer`` in
its own process. Run as a file (as the grader starts it), this module loads only its
sibling modules ``functions``, ``interface`` and ``layers`` (torch alone) and never
``fn_trainer``'s reference code, so none of it is in the submission's process. Frames on both pipes are an
8-byte length followed by ``torch.save`` bytes, read with ``weights_only=True``.

The answer key is out of the submission's reach by name: before ``solution.py`` is
imported, ``hide_answer_key`` drops ``fn_trainer`` and ``compat`` from ``sys.modules``
(this module keeps its own references to what it uses) and refuses any later import of
them, so ``from compat.solution import *`` fails like any missing module.
"""
from __future__ import annotations

import collections
import importlib
import importlib.abc
import importlib.util
import inspect
import io
import os
import signal
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn


def _sibling(name: str):
    """This folder's module ``name``, loaded from its file without importing the package."""
    spec = importlib.util.spec_from_file_location(f"grading_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SIBLINGS = ("functions", "interface", "layers")  # the only modules of the package this file loads
if __package__:  # imported by the grader: the package is there already
    from . import functions, interface, layers
else:  # the submission's process: fn_trainer's reference code is never loaded into it
    functions, interface, layers = (_sibling(name) for name in SIBLINGS)
SCALAR_FUNCTIONS, TENSOR_FUNCTIONS = functions.SCALAR_FUNCTIONS, functions.TENSOR_FUNCTIONS
FUNCTIONS, TRAINER_METHODS = interface.FUNCTIONS, interface.TRAINER_METHODS
called_order, describe_layers = layers.called_order, layers.describe_layers
weighted_parameters = layers.weighted_parameters
# the template's NetworkConfiguration, for a submission that has none
NetworkConfiguration = collections.namedtuple("NetworkConfiguration", list(interface.NETWORK_CONFIGURATION_FIELDS),
                                              defaults=list(interface.NETWORK_CONFIGURATION_FIELDS.values()))

HEADER = struct.Struct(">Q")
ANSWER_KEY = ("fn_trainer", "compat")  # the reference and the homework's answer


class AnswerKeyRefused(importlib.abc.MetaPathFinder):
    """Refuses to import the answer key, whatever ``sys.path`` holds."""

    def find_spec(self, name: str, path=None, target=None):
        if name.partition(".")[0] in ANSWER_KEY:
            raise ModuleNotFoundError(f"No module named {name!r}: the grader's reference is not "
                                      "available to submissions", name=name)
        return None


def hide_answer_key() -> None:
    """Make ``fn_trainer`` and ``compat`` unimportable from here on (see the module's doc)."""
    for name in list(sys.modules):
        if name.partition(".")[0] in ANSWER_KEY:
            del sys.modules[name]
    sys.meta_path.insert(0, AnswerKeyRefused())


def encode(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return HEADER.pack(buffer.tell()) + buffer.getvalue()


def read_frame(stream, limit: int) -> Optional[Any]:
    """The next object on ``stream``, or ``None`` at its end."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > limit:
        raise ValueError(f"a frame of {size} bytes is over the limit of {limit}")
    data = stream.read(size)
    if len(data) < size:
        return None
    return torch.load(io.BytesIO(data), weights_only=True)


def number(value: Any, what: str) -> float:
    """``value`` as a float: a Python number or a one-element tensor/array (of any shape,
    as ``float`` of a tensor takes it; NumPy 2 refuses ``float`` of a shape-``(1,)`` array)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{what} returned a tensor of shape {tuple(value.shape)}, expected one number")
        return float(value.detach())
    size, shape = getattr(value, "size", None), getattr(value, "shape", None)
    if isinstance(size, int) and isinstance(shape, tuple):  # a NumPy array or scalar
        if size != 1:
            raise TypeError(f"{what} returned an array of shape {shape}, expected one number")
    try:
        return float(value.reshape(()) if size == 1 and shape else value)
    except (AttributeError, TypeError, ValueError):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a number") from None


def tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}, expected a torch.Tensor")
    return value.detach().cpu().clone().as_subclass(torch.Tensor)


def attempt(run: Callable[[], Any]) -> Dict[str, Any]:
    """``{"value": run()}``, or ``{"error": one line}`` when the submission's code raises."""
    try:
        return {"value": run()}
    except BaseException as e:  # SystemExit too: a submission's exit() is its answer here
        if isinstance(e, KeyboardInterrupt):
            raise
        return {"error": describe_error(e)}


class Described(Exception):
    """An error whose message is already ``describe_error``'s, one or more of them."""


def describe_error(e: BaseException) -> str:
    """``Type: message`` and the last line of the submission's file in the traceback."""
    if isinstance(e, Described):
        return str(e)
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if os.path.basename(frame.filename) == "solution.py":
            where = f" (solution.py line {frame.lineno}: {(frame.line or '').strip()[:200]})"
            break
    try:
        message = " ".join(str(e).split())[:300]
    except Exception:  # the submission's own exception class, whose __str__ fails too
        message = "(its message could not be printed)"
    return f"{type(e).__name__}: {message}{where}" if message else f"{type(e).__name__}{where}"


# ---- the submission's pieces ----

def config_of(solution, fields: Dict[str, tuple]):
    """The submission's ``NetworkConfiguration`` (fn_trainer's if it has none)."""
    make = getattr(solution, "NetworkConfiguration", NetworkConfiguration)
    return make(**fields)


def grader_network(spec: Dict[str, Any]) -> nn.Module:
    """The grader's own network, rebuilt from the layers it sent (``layers.recipe``) with
    the sent parameters, so that questions 8-11 do not depend on the submission's builders."""
    module = layers.from_recipe(spec["layers"])
    module.load_state_dict(spec["params"])
    return module


TINY_SPLITS = (8, 4, 4)  # rows of the train, valid and test splits a submission's __init__ loads here


def tiny_splits(n_classes: int):
    """Splits shaped like the template's ``load_dataset`` gives them, a few rows each."""
    g = torch.Generator().manual_seed(0)
    return tuple((torch.rand(n, 1, 28, 28, generator=g) * 255, torch.arange(n) % n_classes) for n in TINY_SPLITS)


INIT_LIMIT_S = 5.0  # for the submission's own __init__ on tiny data: it builds two small networks
INIT_RETRY_S = 1.0  # an __init__ that raised within this is run again for each request (they take ms)
# per Trainer class, in this process: why its __init__ is not run again (it ran too long, or
# took longer than INIT_RETRY_S to raise), so that a slow one costs its time once
_init_failed: Dict[type, str] = {}
init_notes: list = []  # why the last request's Trainer is not a whole one, for the grader to quote
# A file beside the submission's folder that exists while its __init__ runs: when the process
# ends there (exit(), os._exit(), a crash), the grader finds it and starts the next process
# with NO_OWN_INIT, whose Trainers are made without that __init__.
INIT_MARKER = "init-running"
NO_OWN_INIT = "--no-own-init"
init_marker: Optional[str] = None  # its path, set by main
own_init_ended = False  # NO_OWN_INIT was given
ENDED_NOTE = ("Trainer.__init__ ended its process (exit(), os._exit() or a crash), so these methods ran on a "
              "Trainer made without it")


class InitTooSlow(Exception):
    pass


def constructed(solution, network_type: str, n_classes: int, lr: float, batch_size: int):
    """A ``Trainer`` made by the submission's own ``__init__`` (``own_init``), so that
    whatever else it sets up (a device, a helper) is there. When that ``__init__`` raises
    within ``INIT_RETRY_S``, the ``Trainer`` as far as it got (every attribute set before
    the failing line), made anew for each request; when it runs too long or raises later
    than that, one made without it, from then on in this process. The questions then test
    the methods, and the attributes the template's ``__init__`` sets come from
    ``trainer_of``. So a wrong ``create_mlp``, which the ``__init__`` calls, costs points
    in its own question only; ``init_notes`` says why."""
    cls = solution.Trainer
    if own_init_ended:
        init_notes.append(ENDED_NOTE)
        return cls.__new__(cls)
    if cls in _init_failed:
        init_notes.append(_init_failed[cls])
        return cls.__new__(cls)
    start = time.monotonic()
    trainer, error = own_init(cls, network_type, n_classes, lr, batch_size)
    if error is None:
        return trainer
    if trainer is not None and time.monotonic() - start <= INIT_RETRY_S:
        init_notes.append(f"Trainer.__init__ raised {error}, so these methods ran on a Trainer whose __init__ "
                          "stopped there")
        return trainer
    _init_failed[cls] = (f"Trainer.__init__ {error}" if trainer is None else
                         f"Trainer.__init__ raised {error} after {time.monotonic() - start:.1f} s, so these methods "
                         "ran on a Trainer made without it")
    init_notes.append(_init_failed[cls])
    return cls.__new__(cls)


def own_init(cls, network_type: str, n_classes: int, lr: float, batch_size: int):
    """``cls``'s ``__init__`` with ``load_dataset`` answering ``tiny_splits`` instead of
    reading Fashion-MNIST (also when called as ``Trainer.load_dataset``) and no
    normalisation, within ``INIT_LIMIT_S`` seconds; torch's default dtype, device and
    grad mode are as before it, whatever it set. ``(trainer, None)``; when it raised,
    ``(the trainer as far as it got, the error)``; when it ran too long, ``(None, why)``."""
    trainer, error = cls.__new__(cls), None
    splits = tiny_splits(n_classes)
    saved = cls.__dict__.get("load_dataset")
    dtype, device, grad = torch.get_default_dtype(), torch.get_default_device(), torch.is_grad_enabled()
    # Python runs a signal's handler at some later bytecode, perhaps in the clean-up below:
    # it raises only while the submission's code may still be running.
    armed = [True]

    def too_slow(signum, frame):
        if armed[0]:
            armed[0] = False
            raise InitTooSlow(f"__init__ took more than {INIT_LIMIT_S:g} s on a few images")

    previous = signal.signal(signal.SIGALRM, too_slow)
    try:
        try:
            # armed in here: on a busy machine the alarm may be due before the next bytecode
            signal.setitimer(signal.ITIMER_REAL, INIT_LIMIT_S)
            # type's own setattr: a metaclass of the submission's cannot refuse it
            type.__setattr__(cls, "load_dataset", staticmethod(lambda datapath: splits))
            if init_marker is not None:
                open(init_marker, "w").close()
            cls.__init__(trainer, network_type=network_type, n_classes=n_classes, lr=lr, batch_size=batch_size,
                         normalization=False)
        finally:
            armed[0] = False  # the handler may raise before this line: caught below
            if init_marker is not None and os.path.exists(init_marker):
                os.unlink(init_marker)
    except BaseException as e:  # the submission's __init__ may fail any way, exit() included
        if isinstance(e, KeyboardInterrupt):
            raise
        if isinstance(e, InitTooSlow):
            trainer, error = None, f"took more than {INIT_LIMIT_S:g} s on a few images, so these methods ran on a " \
                "Trainer made without it"
        else:
            error = describe_error(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_default_dtype(dtype)
        if torch.get_default_device() != device:  # None: no device context at all, as by default
            torch.set_default_device(None if device.type == "cpu" else device)
        torch.set_grad_enabled(grad)
        if saved is not None:
            type.__setattr__(cls, "load_dataset", saved)
        elif "load_dataset" in cls.__dict__:  # the __init__ may have deleted it already
            type.__delattr__(cls, "load_dataset")
    return trainer, error


def trainer_of(solution, request: Dict[str, Any]):
    """A ``Trainer`` from ``constructed``, with the grader's network and
    ``torch.optim.Adam`` and the other attributes the template's ``__init__`` sets."""
    spec = request["network"]
    lr, batch_size = request.get("lr", 1e-4), request.get("batch_size", 128)
    trainer = constructed(solution, spec["type"], spec["n_classes"], lr, batch_size)
    trainer.network = grader_network(spec)
    trainer.network_type = spec["type"]
    trainer.optimizer = torch.optim.Adam(trainer.network.parameters(), lr=lr)
    trainer.datapath = "./data"
    trainer.n_classes = spec["n_classes"]
    trainer.lr = lr
    trainer.batch_size = batch_size
    trainer.epsilon = request.get("epsilon", 1e-9)
    trainer.train_logs = {'train_accuracy': [], 'validation_accuracy': [], 'train_loss': [],
                          'validation_loss': [], 'train_gradient_norm': []}
    return trainer


def state_of(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def grads_of(module: nn.Module) -> Dict[str, Optional[torch.Tensor]]:
    return {k: None if v.grad is None else v.grad.detach().clone() for k, v in module.named_parameters()}


# ---- the requests ----

def describe_signature(obj: Any, static: bool) -> Dict[str, Any]:
    params = []
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            params.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            params.append(f"**{p.name}")
        elif p.default is not p.empty:
            default = p.default
            text = "NetworkConfiguration()" if type(default).__name__ == "NetworkConfiguration" \
                and tuple(default) == tuple(NetworkConfiguration()) else repr(default)
            params.append(f"{p.name}={text}")
        else:
            params.append(p.name)
    return {"params": params, "static": static}


def op_interface(solution, request):
    functions = {name: describe_signature(getattr(solution, name), False)
                 if callable(getattr(solution, name, None)) else None for name in FUNCTIONS}
    trainer = getattr(solution, "Trainer", None)
    methods = None
    if inspect.isclass(trainer):
        methods = {}
        for name in TRAINER_METHODS:
            raw = inspect.getattr_static(trainer, name, None)
            static = isinstance(raw, staticmethod)
            target = getattr(trainer, name, None)
            methods[name] = describe_signature(target, static) if callable(target) else None
    config = getattr(solution, "NetworkConfiguration", None)
    fields = None
    if inspect.isclass(config) and hasattr(config, "_fields"):
        fields = {f: repr(config._field_defaults.get(f)) for f in config._fields}
    return {"functions": functions, "trainer": methods, "config": fields}


def op_gradient_norm(solution, request):
    f = SCALAR_FUNCTIONS[request["function"]]
    return number(solution.gradient_norm(f, *request["tensors"]), "gradient_norm")


def op_jacobian_norm(solution, request):
    return number(solution.jacobian_norm(TENSOR_FUNCTIONS[request["function"]], request["x"]),
                  "jacobian_norm")


def op_activation(solution, request):
    module = solution.Trainer.create_activation_function(request["name"])
    if not isinstance(module, nn.Module):
        raise TypeError(f"create_activation_function returned {type(module).__name__}, "
                        "expected a torch.nn.Module")
    with torch.no_grad():
        return tensor(module(request["x"]), "the activation module")


def op_build(solution, request):
    """``create_mlp``/``create_cnn`` with the grader's arguments: the layers, the
    parameter count, the weights in order and the output on ``x``."""
    trainer = solution.Trainer
    build = trainer.create_mlp if request["type"] == "mlp" else trainer.create_cnn
    net = build(request["first"], config_of(solution, request["config"]), request["n_classes"],
                layers.from_recipe([(request["activation_class"], {})])[0])
    if not isinstance(net, nn.Module):
        raise TypeError(f"create_{request['type']} returned {type(net).__name__}, expected a torch.nn.Module")

    def forward():
        with torch.no_grad():
            return tensor(net(request["x"]), "the network")

    # the layers as the forward calls them: a correct network need not register them in that order
    output, order = called_order(net, lambda: attempt(forward))
    if "error" in output:
        order = None
    return {"layers": describe_layers(net, order), "n_params": sum(p.numel() for p in net.parameters()),
            "weights": weighted_parameters(net, order), "output": output}


def op_normalize(solution, request):
    out = solution.Trainer.normalize(*request["splits"])
    return [[tensor(part, "normalize") for part in split] for split in out]


def op_one_hot(solution, request):
    trainer = constructed(solution, "mlp", request["n_classes"], 1e-4, 128)
    trainer.n_classes = request["n_classes"]
    return tensor(trainer.one_hot(request["y"]), "one_hot")


def op_loss_and_accuracy(solution, request):
    trainer = trainer_of(solution, request)
    loss, acc = trainer.compute_loss_and_accuracy(request["X"], request["Y"])

    def backward():
        trainer.network.zero_grad(set_to_none=True)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"the loss is a {type(loss).__name__}, not a torch.Tensor")
        if not loss.requires_grad:
            raise ValueError("the loss has no graph (requires_grad is False)")
        loss.backward()
        return grads_of(trainer.network)

    # each value on its own: a part checks only its own, so one wrong type costs one part
    return {"loss": attempt(lambda: number(loss, "compute_loss_and_accuracy's loss")),
            "accuracy": attempt(lambda: number(acc, "compute_loss_and_accuracy's accuracy")),
            "gradients": attempt(backward)}


def op_network_gradient_norm(solution, request):
    net = grader_network(request["network"])
    for name, p in net.named_parameters():
        p.grad = request["grads"][name].clone()
    return number(solution.Trainer.compute_gradient_norm(net), "compute_gradient_norm")


def op_training_step(solution, request):
    """Each call's returned norm, parameters and ``.grad`` buffers, and ``own_norm``: the
    submission's ``compute_gradient_norm`` of those buffers, so that a ``training_step``
    built on a wrong one can be told from a wrong ``training_step`` (question 9 then
    costs the points, not question 10) with no reference code in this process."""
    trainer = trainer_of(solution, request)
    steps = []
    for X, Y in request["batches"]:
        before = state_of(trainer.network)
        norm = number(trainer.training_step(X, Y), "training_step")
        after = state_of(trainer.network)
        own = attempt(lambda: own_gradient_norm(trainer, before, after))
        steps.append({"norm": norm, "own_norm": own.get("value"), "params": after,
                      "grads": grads_of(trainer.network)})
    return steps


def own_gradient_norm(trainer, before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> float:
    """The submission's ``compute_gradient_norm`` of its network as a ``training_step`` sees
    it before the update: the parameters ``before`` the step (a wrong norm may read them),
    the ``.grad`` buffers the step left. The parameters are put back ``after`` it."""
    params = dict(trainer.network.named_parameters())
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(before[k])
    try:
        return number(trainer.compute_gradient_norm(trainer.network), "compute_gradient_norm")
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(after[k])


def op_evaluate(solution, request):
    trainer = trainer_of(solution, request)
    forwards = []  # whether the network ran: calling it, not its .forward(), shows here
    trainer.network.register_forward_hook(lambda *args: forwards.append(1))
    first = attempt(lambda: trainer.evaluate(request["X"], request["Y"]))
    given = "one-hot rows"
    if "error" in first:  # the template leaves the form of y open: labels are fine too
        one_hot_error = first["error"]
        given, first = "labels", attempt(lambda: trainer.evaluate(request["X"], request["y"]))
        if "error" in first:  # the template passes one-hot rows: that error comes first
            raise Described(f"{one_hot_error}; with integer labels instead: {first['error']}")
    loss, acc = first["value"]
    return {"loss": attempt(lambda: number(loss, "evaluate's loss")),
            "accuracy": attempt(lambda: number(acc, "evaluate's accuracy")),
            "targets": given, "params": state_of(trainer.network), "ran_network": bool(forwards)}


OPS = {name[3:]: f for name, f in globals().items() if name.startswith("op_")}


def answer(solution, request: Dict[str, Any]) -> Dict[str, Any]:
    """``attempt`` of the request's op, with ``"note"`` when the ``Trainer`` it ran on was
    not a whole one (``constructed``), for the grader to quote where a part fails."""
    init_notes.clear()
    out = attempt(lambda: OPS[request["op"]](solution, request))
    if init_notes:
        out["note"] = init_notes[0]
    return out


def main(argv) -> None:
    global init_marker, own_init_ended
    folder, request_fd, answer_fd = argv[0], int(argv[1]), int(argv[2])
    init_marker = os.path.join(os.path.dirname(os.path.abspath(folder)), INIT_MARKER)
    own_init_ended = NO_OWN_INIT in argv[3:]
    requests = os.fdopen(request_fd, "rb")
    answers = os.fdopen(answer_fd, "wb")
    torch.set_num_threads(1)
    grader_facing = os.getpid()

    def send(obj):
        # a process the submission forked returns here too: it must neither answer nor read
        # the next request (both would be mixed with this process's), so it ends, quietly
        if os.getpid() != grader_facing:
            os._exit(0)
        answers.write(encode(obj))
        answers.flush()

    if "--allow-reference" not in argv[3:]:
        hide_answer_key()
    sys.path.insert(0, folder)
    imported = attempt(lambda: importlib.import_module("solution"))
    if "error" in imported:
        send({"error": f"importing solution.py failed: {imported['error']}"})
        return
    solution = imported["value"]
    send({"value": "imported"})
    while (request := read_frame(requests, 1 << 30)) is not None:
        send(answer(solution, request))


if __name__ == "__main__":
    main(sys.argv[1:])
