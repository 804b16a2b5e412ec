"""``torch.compile`` over the whole pure training step.

The step is compiled from the outside: ``torch.func`` transforms (``grad``, ``vmap``)
stay inside the traced function, so Inductor sees forward, backward and the optimizer
update as one graph and fuses the element-wise work (Adam, loss, metrics). Every
value that changes between steps (the step counter, the learning rate and the other
hyper-parameters of ``AdamState``) is a tensor, so the compiled graph is reused for
every step; a new batch shape (the smaller last batch of an epoch) runs eagerly by
default rather than compiling a second graph. Eager execution stays the reference:
the compiled step returns the same values up to floating-point reassociation.
"""
from __future__ import annotations

import types
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_leaves

from ..core.checks import check_bool, check_function, check_positive_int
from ..core.evaluate import EVAL_CHUNK, Evaluate, chunk_scores, evaluate_in_chunks
from ..core.losses import cross_entropy
from ..core.step import Apply, Batch, Loss, Params, Step
from ..core.trees import tree_clone

MultiStep = Callable[[Params, object, Batch], Tuple[Params, object, Dict[str, Tensor]]]


class DonatingStep:
    """A compiled step whose fast form writes the new ``params`` and ``opt_state`` into the
    ones it is given, as JAX's donated buffers are (``compile_step(..., donate=True)``).

    ``in_place(params, opt_state, batch)`` is that form: it returns the tensors it was
    given, updated; what they held before is gone. Called as a function the step is pure,
    as every step is: it works on detached copies of ``params`` and ``opt_state`` (so a wrapper
    that knows nothing of donation stays safe, and pays for the copies). ``train_epochs``,
    under ``fit`` and ``fit_population``, calls ``in_place`` with a state of its own and
    holds an interrupt until a step and its record are done.
    """

    __slots__ = ("in_place",)

    def __init__(self, in_place: Step) -> None:
        self.in_place = in_place

    def __call__(self, params: Params, opt_state, batch: Batch):
        return self.in_place(tree_clone(params), tree_clone(opt_state), batch)


def written_into_arguments(step: Step) -> Step:
    """``step`` that writes its new parameters and state into the tensors it was given
    (``copy_``) and returns those: compiled, Inductor computes the update in place, with
    no second copy of the state (the values are the pure step's). Each returned tensor
    goes where the given one of the same name (key path) was, and must have its shape
    and dtype, else a ``ValueError``; one returned under another name than it was given
    (a state keeping the last parameters) is copied first. A returned view of a given
    tensor is not: it would read what was written before it."""

    def step_in_place(params: Params, opt_state, batch: Batch):
        new_params, new_state, metrics = step(params, opt_state, batch)
        given = tree_flatten_with_path((params, opt_state))[0]
        new_by_path = dict(tree_flatten_with_path((new_params, new_state))[0])
        if len(new_by_path) != len(given) or any(path not in new_by_path for path, _ in given):
            raise ValueError("a donating step must return params and opt_state with the names it was given")
        for path, old in given:
            new = new_by_path[path]
            if any(new is other for other_path, other in given if other_path != path):
                new_by_path[path] = new.clone()  # before the given one is overwritten
        for path, old in given:
            new = new_by_path[path]
            if new is old:  # the hyper-parameters come back as they were given
                continue
            if not isinstance(old, Tensor) or not isinstance(new, Tensor) or (new.shape, new.dtype) != (
                    old.shape, old.dtype):
                raise ValueError(f"a donating step must return params and opt_state like those it was given: "
                                 f"{keystr(path)} changed its type, shape or dtype")
            old.copy_(new)
        return params, opt_state, metrics

    return step_in_place


def check_donated(params: Params, opt_state) -> None:
    """Raise naming ``params``/``opt_state`` unless their tensors may be overwritten in
    place: none requires grad, none overlaps itself (an expanded view) and no two
    overlap in memory (one write would change both). Empty tensors hold nothing."""
    spans = []
    for leaf in tree_leaves((params, opt_state)):
        if not isinstance(leaf, Tensor) or leaf.numel() == 0:
            continue
        if leaf.requires_grad:
            raise ValueError("a donating step overwrites params and opt_state, which must not require grad: "
                             "pass detached tensors")
        # 1: overlaps; 2: too complex to tell (any non-dense view), where a broadcast dimension is what overlaps
        overlap = torch._debug_has_internal_overlap(leaf)
        if overlap == 1 or (overlap == 2 and any(n > 1 and st == 0 for n, st in zip(leaf.shape, leaf.stride()))):
            raise ValueError("a donating step overwrites params and opt_state, and one of their tensors overlaps "
                             "itself in memory (an expanded view): pass tensors of their own")
        first = leaf.data_ptr()
        last = first + leaf.element_size() * (1 + sum((n - 1) * abs(st) for n, st in zip(leaf.shape, leaf.stride())))
        spans.append((leaf.device, first, last))
    spans.sort(key=lambda span: (str(span[0]), span[1]))
    for (device, _, end), (next_device, next_start, _) in zip(spans, spans[1:]):
        if device == next_device and next_start < end:
            raise ValueError("a donating step overwrites params and opt_state, and two of their tensors share "
                             "memory: pass tensors of their own (init(params) makes a state of its own)")


def compile_step(step: Step, *, mode: str | None = None, other_shapes: str = "eager",
                 eager: Optional[Step] = None, guard_closures: bool = True,
                 batch_shape: Optional[Tuple[int, ...]] = None, donate: bool = False) -> Step:
    """``step`` under ``torch.compile(fullgraph=True, dynamic=False)``, same signature.

    The graph is specialised to ``batch_shape``, the shape of a full minibatch's inputs
    ``batch[0]`` (``None``: the first minibatch's, which a run resumed at an epoch's
    short last minibatch would make the short one). A minibatch of another shape (the
    smaller last one of an epoch) runs eagerly when ``other_shapes="eager"`` (one eager
    step per epoch instead of a second compilation as long as the first), or compiles
    another graph when ``other_shapes="compile"`` (up to Dynamo's recompile limit, 8 by
    default: a call with a ninth shape fails).
    The eager step is ``eager`` if given, else ``step``: a step built on a forward
    written for Inductor (``fn_trainer.speed.inductor_apply``) can leave that minibatch
    to the plain one. ``mode`` names one of ``torch.compile``'s modes, whose options are
    passed (``None``: its default).

    ``guard_closures=False`` is the fast path for a step whose closures and globals never
    change after its first call (those of ``make_step``): before each call Dynamo then
    checks only the guards on the arguments (every tensor's shape, stride, dtype and
    device, the dicts' keys, the types, any Python number; :func:`argument_guards`) and
    on global state (grad mode and the like), not those on what the trace read through
    closures and globals: the network's module tree, the optimizer's constants, a
    thousand checks for the CNN that took 0.3-0.4 ms of its 5.5 ms step. By default
    every guard is checked, and a step that reads a changed closure compiles again.
    The compiled function has a code object of its own (:func:`own_code`), so its cache
    serves only this ``step``.

    ``donate=True`` returns a :class:`DonatingStep`, whose ``in_place`` writes the new
    parameters and state into the tensors it is given and returns them: up to a tenth
    faster on a CPU, where the state then stays in one copy in the caches
    (benchmarks/README.md). ``fit`` and ``fit_population`` use ``in_place``; called as a
    function the step stays pure (on copies). ``in_place`` refuses parameters that
    require grad and tensors that overlap in memory.
    """
    check_function("step", step)
    donate = check_bool("donate", donate)
    if other_shapes not in ("eager", "compile"):
        raise ValueError(f"other_shapes must be 'eager' or 'compile', got {other_shapes!r}")
    if eager is not None:
        check_function("eager", eager)
    try:
        options = dict(torch._inductor.list_mode_options(mode)) if mode is not None else {}
    except RuntimeError as e:  # torch's own message lists the modes
        raise ValueError(f"mode: {e}") from None
    if not guard_closures and hasattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe"):
        options["guard_filter_fn"] = argument_guards  # guard filters exist (torch >= 2.7)
    # torch.compile takes a mode or options, not both: the mode's options are merged in
    fallback = step if eager is None else eager
    compiled = _errors_as_eager(torch.compile(own_code(written_into_arguments(step) if donate else step),
                                              fullgraph=True, dynamic=False, options=options or None), fallback)
    if donate:  # the short last minibatch too returns the tensors it was given
        fallback = written_into_arguments(fallback)
    if other_shapes == "compile":
        chosen = compiled
    else:
        first_shape = None if batch_shape is None else _checked_batch_shape(batch_shape)

        def chosen(params: Params, opt_state, batch: Batch):
            nonlocal first_shape
            shape = tuple(batch[0].shape)
            if first_shape is None:
                first_shape = shape
            return (compiled if shape == first_shape else fallback)(params, opt_state, batch)

    if not donate:
        return chosen
    checked: Tuple[object, object] = (None, None)  # what the last call was given: a loop passes back its result

    def in_place(params: Params, opt_state, batch: Batch):
        nonlocal checked
        if params is not checked[0] or opt_state is not checked[1]:
            check_donated(params, opt_state)
            checked = (params, opt_state)
        return chosen(params, opt_state, batch)

    return DonatingStep(in_place)


def compile_evaluate(apply: Apply, *, chunk_size: int = EVAL_CHUNK, eager: Optional[Apply] = None,
                     loss: Loss = cross_entropy) -> Evaluate:
    """``make_evaluate`` whose chunks of ``chunk_size`` rows run as one graph under
    ``torch.compile(fullgraph=True, dynamic=False)``: ``apply``'s forward, the loss and the
    accuracy, with no autograd. A chunk of other rows (a data set's last) runs eagerly with
    ``eager`` if given, else ``apply``. Same values up to float32 reassociation.

    Worth it for a CNN evaluated every epoch: its eager forward over small channel counts
    ran 3-10 times as long as the compiled one, a chunk of a few hundred rows at a time
    (benchmarks/README.md); an MLP's eager forward is a few products, already as fast.
    """
    check_function("apply", apply)
    check_function("loss", loss)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if eager is not None:
        check_function("eager", eager)
    compiled = _errors_as_eager(torch.compile(own_code(chunk_scores(apply, loss)), fullgraph=True, dynamic=False),
                                plain := chunk_scores(apply if eager is None else eager, loss))

    def scores(params: Params, x: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        return (compiled if x.shape[0] == chunk_size else plain)(params, x, targets)

    return evaluate_in_chunks(scores, chunk_size)


def _errors_as_eager(compiled: Callable, eager: Callable) -> Callable:
    """``compiled`` (a step, or a chunk's scores), whose tracing, stopped by an error the
    function raises on its arguments (a batch of another dtype, targets of another width),
    is reported as ``eager`` reports it: the function's own one-line error, not Dynamo's
    thirty lines around it. The eager function (pure, as steps and scores are) runs only
    once tracing has failed, so before any compiled code ran; if it raises nothing,
    Dynamo's error stands. Other failures (a recompile refused, the backend's) are raised
    as they are, with no eager run."""

    def call(*args):
        try:
            return compiled(*args)
        except Exception as e:
            # what tracing raises when the function raises on its arguments (Dynamo is loaded by now)
            if not isinstance(e, (torch._dynamo.exc.Unsupported, torch._dynamo.exc.TorchRuntimeError)):
                raise
            dynamo_error = e
        try:  # outside the handler: the eager function's error comes without Dynamo's around it
            eager(*args)
            raise dynamo_error
        finally:
            del dynamo_error  # its traceback holds this frame, and with it the batch

    return call


def _checked_batch_shape(batch_shape: object) -> Tuple[int, ...]:
    """``batch_shape`` as a tuple of ``(B, ...)`` sizes >= 1, at least two of them (a minibatch
    of samples), else an error naming it: no minibatch would ever match it, and every step
    would run eagerly, unsaid."""
    if (isinstance(batch_shape, (str, bytes)) or not isinstance(batch_shape, Sequence) or len(batch_shape) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in batch_shape)):
        raise ValueError(f"batch_shape must be a full minibatch's input shape (B, ...), sizes >= 1, got {batch_shape!r}")
    return tuple(batch_shape)


def argument_guards(entries) -> list:
    """A ``guard_filter_fn``: keep the guards on ambient state (no source: grad mode,
    functorch's stack, the default device...) and on whatever the trace reached from the
    arguments of :func:`own_code`'s function, ``args`` and ``kwargs`` (an item, a key, a
    type, an attribute of them, however Dynamo names it)."""
    return [e.name == "" or _root_name(e.orig_guard.originating_source) in ("args", "kwargs") for e in entries]


def _root_name(source) -> Optional[str]:
    """The local variable a guard's source starts from (``None``: a global, a closure cell's
    contents are the cell's own name)."""
    while getattr(source, "base", None) is not None:  # chained sources: items, attributes, types
        source = source.base
    return getattr(source, "local_name", None)


def own_code(fn: Callable) -> Callable:
    """``fn`` behind a function whose code object no other function shares.

    Dynamo keeps its compiled graphs on the code object. Two steps from ``make_step``
    share one, and with the closure guards dropped (:func:`compile_step`) the second
    network would be served the first one's graph (tested); with them kept, every
    network compiled in a process would count towards one code object's recompile limit.
    """
    def traced(*args, **kwargs):
        return fn(*args, **kwargs)

    code = traced.__code__.replace()  # a new code object, equal in content
    return types.FunctionType(code, traced.__globals__, traced.__name__, None, traced.__closure__)


def multi_step(step: Step, n_steps: int) -> MultiStep:
    """``n_steps`` consecutive steps as one function over stacked minibatches.

    ``multi(params, opt_state, (xs, targets))`` with ``xs: (n_steps, B, ...)`` and
    ``targets: (n_steps, B, C)`` applies ``step`` to ``(xs[i], targets[i])`` for
    ``i = 0 .. n_steps - 1`` and returns the final parameters and state and the
    metrics stacked along a leading ``(n_steps,)`` axis. Compiled, the loop is unrolled
    into one graph.
    """
    check_positive_int("n_steps", n_steps)

    def multi(params: Params, opt_state, batches: Batch):
        xs, targets = batches
        if xs.shape[:1] != (n_steps,) or targets.shape[:1] != (n_steps,):  # shapes only: no host sync
            raise ValueError(f"multi_step needs {n_steps} stacked minibatches, got inputs {tuple(xs.shape)} and "
                             f"targets {tuple(targets.shape)}")
        history = []
        for i in range(n_steps):
            params, opt_state, metrics = step(params, opt_state, (xs[i], targets[i]))
            history.append(metrics)
        stacked = {k: torch.stack([m[k] for m in history]) for k in history[0]}
        return params, opt_state, stacked

    return multi
