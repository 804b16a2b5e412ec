"""The choices that depend on the CPU, measured on it once and stored per CPU.

Four choices of the fast path depend on the machine more than on the code:

- ``winograd_min_channels``: from how many input channels a pooled 3x3 convolution runs
  as Winograd products (:mod:`.winograd`) rather than one patch product (:mod:`.patches`).
  The transforms cost memory passes, the products save multiply-adds; where the balance
  tips depends on the CPU's matmul speed against its memory speed.
- ``compile_min_steps[network_type]``: from how many training steps a run compiles its
  step. Compiling pays once its cold cost ``c`` (seconds, with an empty Inductor cache)
  is repaid by the time saved per step: ``ceil(c / (t_eager - t_compiled))``.
- ``eval_chunk``: how many rows a compiled CNN evaluation takes at once. The activations
  of a few hundred rows stay in the CPU's caches, those of thousands do not, and too few
  rows make small products: where the balance lies depends on the caches.
- ``eval_compile_min_rows``: from how many rows evaluated over a run (every member, every
  epoch) a CNN run compiles its evaluation, as ``compile_min_steps`` decides for steps.

:func:`calibrate` measures them in a child process with an empty Inductor cache, so the
compile times are the cold ones and nothing of the measurement stays in the caller's
process; :func:`load_calibration` and :func:`store_calibration` keep one calibration per
CPU (:func:`cpu_key`) in a JSON file. ``DEFAULTS`` holds the values used where nothing
was measured: those measured on a 2-core Intel Xeon (the evaluation's: on a 2-core AMD EPYC).
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..core.networks import NETWORK_TYPES
from ..core.paths import read_regular_file, write_atomically

NEVER = 2 ** 31 - 1  # a threshold no layer or run reaches: the choice is never taken
CHANNELS = (8, 16, 32)  # the input channels at which the two forms of a layer are timed
EVAL_CHUNKS = (125, 250, 500, 1000)  # the evaluation chunks timed: each divides 2,000 and 10,000 rows
EVAL_ROWS = 2000  # the rows of the evaluation timed
# measured since 2026-12-05: an earlier version's entry, without them, takes them from DEFAULTS
ADDED_FIELDS = ("eval_chunk", "eval_compile_min_rows", "eval_ms", "eval_eager_ms", "eval_compile_s")


class CalibrationError(RuntimeError):
    """The measuring process failed; the message gives its last line of error output."""


class Calibration(NamedTuple):
    """What :func:`calibrate` measured on the CPU ``cpu`` (:func:`cpu_key`), and what follows.

    ``layer_ms[C] = (patch, winograd)``: milliseconds per compiled CNN training step whose
    pooled 3x3 layer with ``C`` input channels runs in either form (:func:`time_winograd`);
    ``steps_ms[type] = (eager, compiled)`` per training step and ``compile_s[type]`` for the
    cold compile of the homework's networks; ``eval_ms[chunk]``: milliseconds of a compiled
    CNN evaluation of ``EVAL_ROWS`` rows in chunks of ``chunk`` rows, ``eval_eager_ms`` of
    the eager one, ``eval_compile_s`` the compile of the fastest chunk's graph
    (:func:`time_evaluation`).
    """

    cpu: str
    winograd_min_channels: int
    compile_min_steps: Dict[str, int]
    layer_ms: Dict[int, Tuple[float, float]]
    steps_ms: Dict[str, Tuple[float, float]]
    compile_s: Dict[str, float]
    eval_chunk: int
    eval_compile_min_rows: int
    eval_ms: Dict[int, float]
    eval_eager_ms: float
    eval_compile_s: float


# measured on a 2-core Intel Xeon (benchmarks/README.md). Forward and backward of a 13x13
# layer with 32 outputs, batch 128, compiled, in ms (patch product / Winograd): 1.89 / 2.00
# at 8 input channels, 1.92 / 1.82 at 10, 2.82 / 2.09 at 16. A compile (2-3 s for the MLP,
# 7-8 s for the CNN with a warm Inductor cache, 15 s and 32 s cold) saved 1.8 ms of every
# MLP and 10 ms of every CNN step: one threshold between the warm and the cold cost of both.
# The evaluation was measured on a 2-core AMD EPYC alone: an epoch's 4,000 rows took 382 ms
# eagerly and 76, 82, 86 and 156 ms compiled in chunks of 125, 250, 500 and 1,000 rows for
# the (16, 32, 45) CNN (each chunk's graph compiled in 8.6-8.8 s), 348 ms and 37, 33, 37 and
# 37 ms for the (8, 16, 32, 64) one: 250 rows, and the first CNN's figures for the compile,
# which pays from 58 evaluations of 2,000 rows.
DEFAULTS = Calibration(cpu="defaults (2-core Intel Xeon)", winograd_min_channels=10,
                       compile_min_steps={"mlp": 1000, "cnn": 1000}, layer_ms={}, steps_ms={}, compile_s={},
                       eval_chunk=250, eval_compile_min_rows=58 * EVAL_ROWS, eval_ms={}, eval_eager_ms=191.0,
                       eval_compile_s=8.7)


def cpu_key() -> str:
    """What a calibration holds for: the CPU (its name, family/model/stepping and the vector
    instructions torch uses: a VM's "AMD EPYC" names several generations), the CPUs this
    process may run on, torch's threads and version."""
    try:
        with open("/proc/cpuinfo") as f:
            info = cpu_fields(f.read())
    except OSError:
        info = {}
    name = info.get("model name") or platform.processor() or platform.machine()
    ident = "/".join(info[k] for k in ("cpu family", "model", "stepping") if k in info)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    details = ", ".join(part for part in (ident, capability) if part)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{name}{f' ({details})' if details else ''}; {cpus} CPUs; {torch.get_num_threads()} threads; "
            f"torch {torch.__version__}")


def cpu_fields(cpuinfo: str) -> Dict[str, str]:
    """The first processor's ``field: value`` lines of ``/proc/cpuinfo``."""
    fields: Dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def winograd_threshold(layer_ms: Dict[int, Tuple[float, float]]) -> int:
    """The fewest measured channels from which Winograd was faster at every measured count
    (``NEVER`` if it was not faster at the largest)."""
    threshold = NEVER
    for channels in sorted(layer_ms, reverse=True):
        patch, winograd = layer_ms[channels]
        if winograd >= patch:
            break
        threshold = channels
    return threshold


def steps_to_repay(compile_s: float, eager_ms: float, compiled_ms: float) -> int:
    """``ceil(compile_s / saving)`` steps, the saving per step being ``eager - compiled``
    (``NEVER`` when compiling saves nothing)."""
    saving_s = (eager_ms - compiled_ms) / 1e3
    return NEVER if saving_s <= 0 else min(NEVER, max(1, math.ceil(compile_s / saving_s)))


def median_ms(fn: Callable[[], object], calls: int, reps: int) -> float:
    """Median over ``reps`` repetitions of milliseconds per call of ``calls`` calls."""
    times: List[float] = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def time_winograd(channels: Sequence[int], *, batch: int = 128, steps: int = 10,
                  reps: int = 5) -> Dict[int, Tuple[float, float]]:
    """``{C: (patch_ms, winograd_ms)}``: milliseconds per compiled training step of the
    homework CNN with ``C`` channels in its first layer, so ``C`` input channels in its
    pooled 3x3 second layer, which runs as a patch product or as Winograd products; each
    form from its own compiled graph, the two alternated.

    Whole steps, not the layer alone: timed by itself, the layer's Winograd form came out
    slower at 16 channels (4.6 against 3.8 ms) while the whole step was faster with it
    (6.1 against 7.5 ms; 2-core AMD EPYC).
    """
    from ..core.config import NetworkConfiguration

    out: Dict[int, Tuple[float, float]] = {}
    default = NetworkConfiguration()
    for c in channels:
        config = default._replace(n_channels=(c, *default.n_channels[1:]))
        runs = {form: compiled_steps("cnn", config, threshold, batch=batch, steps=steps)[1]
                for form, threshold in (("patch", NEVER), ("winograd", c))}
        times: Dict[str, List[float]] = {form: [] for form in runs}
        for _ in range(reps):  # alternated: load changes hit both alike
            for form, run in runs.items():
                times[form].append(median_ms(run, 1, 1) / steps)
        out[c] = (statistics.median(times["patch"]), statistics.median(times["winograd"]))
    return out


def compiled_steps(network_type: str, config, winograd_min_channels: int, *, batch: int = 128,
                   steps: int = 10) -> Tuple[float, Callable[[], float], Callable[[], float]]:
    """``(compile_s, compiled_run, eager_run)``: the first compiled training step's seconds
    (compilation included), and ``steps`` steps of the compiled and of the eager step on
    one synthetic minibatch of ``batch`` Fashion-MNIST-shaped images, each call from the
    same start and returning the last step's loss."""
    from ..core.losses import one_hot
    from ..core.networks import build_network
    from ..core.optim import adam, exp_log_power
    from ..core.step import make_step
    from ..core.trees import tree_clone
    from ..training.compiled import compile_step
    from .cnn_forward import inductor_apply

    net = build_network(network_type, config)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *net.input_shape, generator=g) * 255
    targets = one_hot(torch.randint(0, 10, (batch,), generator=g), 10)
    eager = make_step(net.apply, adam(1e-3))
    compiled = compile_step(make_step(inductor_apply(net, winograd_min_channels=winograd_min_channels),
                                      adam(1e-3, power=exp_log_power)), guard_closures=False, donate=True)
    params = net.init(0)
    state = adam(1e-3).init(params)
    start = time.perf_counter()
    float(compiled(params, state, (x, targets))[2]["loss"])  # on copies: the step is pure as a function
    compile_s = time.perf_counter() - start

    def run(step):
        step = getattr(step, "in_place", step)  # the compiled step overwrites its state, as in fit

        def steps_of() -> float:
            p, s = tree_clone(params), tree_clone(state)
            for _ in range(steps):
                p, s, metrics = step(p, s, (x, targets))
            return float(metrics["loss"])
        return steps_of

    return compile_s, run(compiled), run(eager)


def time_training(network_type: str, *, steps: int = 10, reps: int = 5) -> Tuple[float, float, float]:
    """``(compile_s, eager_ms, compiled_ms)`` for the homework's ``network_type`` at its
    default configuration: the first compiled step (compilation included) and the median
    milliseconds per step of the eager and the compiled step, alternated."""
    from ..core.config import NetworkConfiguration

    compile_s, compiled, eager = compiled_steps(network_type, NetworkConfiguration(),
                                                DEFAULTS.winograd_min_channels, steps=steps)
    eager()  # warm: the first eager steps allocate
    times: Dict[str, List[float]] = {"eager": [], "compiled": []}
    for _ in range(reps):
        for name, run in (("eager", eager), ("compiled", compiled)):
            times[name].append(median_ms(run, 1, 1) / steps)
    return compile_s, statistics.median(times["eager"]), statistics.median(times["compiled"])


def time_evaluation(chunks: Sequence[int] = EVAL_CHUNKS, *, rows: int = EVAL_ROWS, reps: int = 5,
                    config=None) -> Tuple[float, Dict[int, float], Dict[int, float]]:
    """``(eager_ms, {chunk: ms}, {chunk: compile_s})``: milliseconds of an evaluation of
    ``rows`` synthetic images by the homework's CNN (``config``, its default if ``None``),
    eager (``make_evaluate``) and compiled in chunks of ``chunk`` rows
    (:func:`~fn_trainer.training.compiled.compile_evaluate`, each chunk size its own graph),
    alternated, and the seconds each chunk's graph took to compile."""
    from ..core.config import NetworkConfiguration
    from ..core.evaluate import make_evaluate
    from ..core.losses import one_hot
    from ..core.networks import build_network
    from ..training.compiled import compile_evaluate
    from .cnn_forward import inductor_apply

    net = build_network("cnn", NetworkConfiguration() if config is None else config)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(rows, *net.input_shape, generator=g) * 255
    targets = one_hot(torch.randint(0, 10, (rows,), generator=g), 10)
    params = net.init(0)
    evaluations = {"eager": make_evaluate(net.apply)}
    compile_s: Dict[int, float] = {}
    for chunk in chunks:
        evaluations[chunk] = compile_evaluate(inductor_apply(net), chunk_size=chunk)
        start = time.perf_counter()
        evaluations[chunk](params, x[:chunk], targets[:chunk])
        compile_s[chunk] = time.perf_counter() - start
    evaluations["eager"](params, x[:chunks[0]], targets[:chunks[0]])  # warm: the first eager pass allocates
    times: Dict[object, List[float]] = {name: [] for name in evaluations}
    for _ in range(reps):  # alternated: load changes hit every form alike
        for name, evaluate in evaluations.items():
            times[name].append(median_ms(lambda: evaluate(params, x, targets), 1, 1))
    return (statistics.median(times["eager"]), {chunk: statistics.median(times[chunk]) for chunk in chunks},
            compile_s)


def measure(channels: Sequence[int] = CHANNELS, network_types: Sequence[str] = NETWORK_TYPES,
            log: Callable[[str], None] = lambda line: None) -> Calibration:
    """Measure in this process (:func:`calibrate` runs it in a fresh one). The compiles of
    the homework's networks come first, so theirs are the cold ones; the CNN's is timed
    with the default Winograd threshold, which the measured one rarely changes for it."""
    steps_ms: Dict[str, Tuple[float, float]] = {}
    compile_s: Dict[str, float] = {}
    for kind in network_types:
        compile_s[kind], eager, compiled = time_training(kind)
        steps_ms[kind] = (eager, compiled)
        log(f"{kind} step: eager {eager:.2f} ms, compiled {compiled:.2f} ms, cold compile {compile_s[kind]:.1f} s")
    layer_ms = time_winograd(channels)
    for c, (patch, winograd) in layer_ms.items():
        log(f"CNN step, {c} input channels in its second layer: patch product {patch:.2f} ms, "
            f"Winograd {winograd:.2f} ms")
    eval_eager_ms, eval_ms, eval_compile_s = time_evaluation()
    eval_chunk = min(eval_ms, key=eval_ms.get)
    log(f"CNN evaluation of {EVAL_ROWS:,} rows: eager {eval_eager_ms:.0f} ms, compiled " + ", ".join(
        f"{ms:.0f} ms in chunks of {chunk}" for chunk, ms in eval_ms.items())
        + f"; compile {eval_compile_s[eval_chunk]:.1f} s")
    # a pass of EVAL_ROWS rows is a "step" of the evaluation
    passes = steps_to_repay(eval_compile_s[eval_chunk], eval_eager_ms, eval_ms[eval_chunk])
    return Calibration(cpu=cpu_key(), winograd_min_channels=winograd_threshold(layer_ms),
                       compile_min_steps={k: steps_to_repay(compile_s[k], *steps_ms[k]) for k in network_types},
                       layer_ms=layer_ms, steps_ms=steps_ms, compile_s=compile_s, eval_chunk=eval_chunk,
                       eval_compile_min_rows=min(NEVER, passes * EVAL_ROWS), eval_ms=eval_ms,
                       eval_eager_ms=eval_eager_ms, eval_compile_s=eval_compile_s[eval_chunk])


def calibrate(log: Callable[[str], None] = lambda line: None) -> Calibration:
    """Measure this CPU's choices (a few minutes on 2 cores) in a child process with
    torch's thread count and an empty Inductor cache, training as the ``fn-trainer``
    command does (malloc thresholds fixed, subnormals flushed); ``log`` gets a line per
    measurement as it is made."""
    with tempfile.TemporaryDirectory(prefix="fn-trainer-calibration-") as cache, \
            tempfile.TemporaryFile("w+") as errors:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        # -c, not -m: run as __main__, this module would be imported a second time
        code = f"from {__name__} import child_main; child_main({torch.get_num_threads()})"
        with subprocess.Popen([sys.executable, "-c", code], env=env,
                              stdout=subprocess.PIPE, stderr=errors, text=True) as child:
            assert child.stdout is not None
            results = []
            try:
                for line in child.stdout:  # the log lines as they come, the result a line of JSON
                    if line.startswith("{"):
                        results.append(line)
                    else:
                        log(line.rstrip("\n"))
            except BaseException:  # Ctrl-C, SIGTERM: the child would measure on, and write into the cache folder
                child.kill()
                child.wait()
                raise
        entry = _last_json(results)
        if child.returncode != 0 or entry is None:
            errors.seek(0)
            last = (errors.read().strip().splitlines() or ["no output"])[-1]
            raise CalibrationError(f"calibration failed (status {child.returncode}): {last}")
    return from_json(entry)


def _last_json(lines: Sequence[str]) -> Optional[object]:
    """The last of ``lines`` that parses as JSON, ``None`` if none does."""
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def to_json(calibration: Calibration) -> Dict:
    return {**calibration._asdict(), "layer_ms": {str(c): list(v) for c, v in calibration.layer_ms.items()},
            "steps_ms": {k: list(v) for k, v in calibration.steps_ms.items()},
            "eval_ms": {str(chunk): ms for chunk, ms in calibration.eval_ms.items()}}


def from_json(entry: object) -> Calibration:
    """A ``Calibration`` from its JSON form; ``ValueError`` saying what is wrong otherwise.
    An :func:`earlier_version`'s entry takes the evaluation's fields from ``DEFAULTS``."""
    if earlier_version(entry):
        entry = {**entry, **{k: v for k, v in to_json(DEFAULTS).items() if k in ADDED_FIELDS}}
    if not isinstance(entry, dict) or set(entry) != set(Calibration._fields):
        raise ValueError(f"an entry must hold exactly {', '.join(Calibration._fields)}")
    if not isinstance(entry["compile_min_steps"], dict):
        raise ValueError("compile_min_steps must map network types to step counts")
    counts = {"winograd_min_channels": entry["winograd_min_channels"], "eval_chunk": entry["eval_chunk"],
              "eval_compile_min_rows": entry["eval_compile_min_rows"], **{
                  f"compile_min_steps[{k!r}]": v for k, v in entry["compile_min_steps"].items()}}
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= NEVER:
            raise ValueError(f"{name} must be an int in [1, {NEVER}], got {value!r}")
    if set(entry["compile_min_steps"]) != set(NETWORK_TYPES):
        raise ValueError(f"compile_min_steps must name {', '.join(NETWORK_TYPES)}")
    if not isinstance(entry["eval_ms"], dict) or not all(
            isinstance(k, str) and k.isascii() and k.isdigit() and not k.startswith("0") for k in entry["eval_ms"]):
        raise ValueError("eval_ms must map chunk sizes, positive whole numbers, to milliseconds")
    try:
        return Calibration(cpu=str(entry["cpu"]), winograd_min_channels=entry["winograd_min_channels"],
                           compile_min_steps=dict(entry["compile_min_steps"]),
                           layer_ms={int(c): (_time(a), _time(b)) for c, (a, b) in entry["layer_ms"].items()},
                           steps_ms={str(k): (_time(a), _time(b)) for k, (a, b) in entry["steps_ms"].items()},
                           compile_s={str(k): _time(v) for k, v in entry["compile_s"].items()},
                           eval_chunk=entry["eval_chunk"], eval_compile_min_rows=entry["eval_compile_min_rows"],
                           eval_ms={int(chunk): _time(v) for chunk, v in entry["eval_ms"].items()},
                           eval_eager_ms=_time(entry["eval_eager_ms"]), eval_compile_s=_time(entry["eval_compile_s"]))
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise ValueError("layer_ms, steps_ms, compile_s and eval_ms must map names to finite non-negative numbers, "
                         "and eval_eager_ms and eval_compile_s be such numbers") from None


def _time(value: object) -> float:
    """A measured time: a finite, non-negative number (``ValueError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    t = float(value)
    if not math.isfinite(t) or t < 0:
        raise ValueError(value)
    return t


def _entries(path: Path) -> Dict[str, object]:
    """The file's calibrations by CPU key (none if there is no file); ``ValueError`` naming
    the file for one that is not such a JSON object."""
    try:  # not through a link: nothing from outside the output folder decides
        data = json.loads(read_regular_file(path, follow_links=False))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a calibration file ({e}); delete it to calibrate again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a calibration file (a JSON object by CPU expected); delete it to calibrate again")
    return data


def calibrated_cpus(path: os.PathLike | str) -> List[str]:
    """The CPU keys that ``path`` holds calibrations for (none if there is no file);
    ``ValueError`` naming ``path`` if it is not a calibration file (a bad entry for this
    CPU is no reason: a new one can replace it)."""
    return sorted(_entries(Path(path)))


def earlier_version(entry: object) -> bool:
    """Whether ``entry`` is an earlier fn-trainer's: every field but ``ADDED_FIELDS``. It is
    not refused as a hand-edited one is: :func:`from_json` takes those from ``DEFAULTS``."""
    return isinstance(entry, dict) and set(entry) == set(Calibration._fields) - set(ADDED_FIELDS)


def load_calibration(path: os.PathLike | str) -> Optional[Calibration]:
    """The calibration stored in ``path`` for this CPU (:func:`cpu_key`), or ``None``."""
    path = Path(path)
    entry = _entries(path).get(cpu_key())
    if entry is None:
        return None
    try:
        calibration = from_json(entry)
        if calibration.cpu != cpu_key():
            raise ValueError(f"the entry for {cpu_key()!r} says it was measured on {calibration.cpu!r}")
    except ValueError as e:
        raise ValueError(f"{path}: {e}; delete it to calibrate again") from None
    return calibration


def store_calibration(path: os.PathLike | str, calibration: Calibration) -> Path:
    """Write ``calibration`` into ``path`` under its CPU, keeping the other CPUs' entries."""
    path = Path(path)
    entries = _entries(path)
    entries[calibration.cpu] = to_json(calibration)
    return write_atomically(path, (json.dumps(entries, indent=2) + "\n").encode())


def child_main(threads: int) -> None:
    """The child process of :func:`calibrate`: lines of log, then the result as JSON."""
    from .denormals import flush_denormals
    from .malloc import steady_malloc

    torch.set_num_threads(threads)
    steady_malloc()  # as the fn-trainer command trains
    flush_denormals(True)
    result = measure(log=lambda line: print(line, flush=True))
    print(json.dumps(to_json(result)))
