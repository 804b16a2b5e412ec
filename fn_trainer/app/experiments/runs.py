"""Training runs of the experiments: what a run is, where its results live, and
training it once (a rerun with the same configuration reuses the stored result).

A run's result is ``<out>/runs/<name>-<hash>.json``, where ``hash`` covers everything
that changes the result (architecture, learning rate, normalisation, batch size,
epochs, seed and a fingerprint of the training data), so experiments that share a run
(the reference MLP appears in three questions) train it once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...core.config import HOMEWORK_SEED, NetworkConfiguration
from ...core.data import N_CLASSES, Split, Splits, load_fashion_mnist, normalize
from ...core.networks import build_network
from ...core.optim import adam
from ...core.paths import read_regular_file, safe_path, write_text
from ...core.step import make_step
from ...speed import inductor_apply
from ...training.compiled import compile_step
from ...training.fit import LOG_KEYS, FitResult, fit, make_evaluate
from ..parallel import data_parallel_run
from ..report import markdown_table, print_warning

RUNS_DIR = "runs"
# Compiling a step costs 2-3 s (MLP) or 7-8 s (CNN) with a warm Inductor cache and 15 s or
# 32 s cold, and saves about 1.8 ms of every MLP step and 10 ms of every CNN step (python -m
# benchmarks.epoch: compiled against eager). It pays for itself after about 800 CNN or
# 1,700 MLP steps with a warm cache, 3,200 or 8,600 from a cold one; one threshold for both
# sits in between.
COMPILE_MIN_STEPS = 1000


def worth_compiling(epochs: int, n_train: int, batch_size: int) -> bool:
    """Whether a run of ``epochs`` epochs over ``n_train`` samples has ``COMPILE_MIN_STEPS`` steps."""
    return epochs * math.ceil(n_train / batch_size) >= COMPILE_MIN_STEPS


@dataclass
class Settings:
    """What the command line gives every experiment."""

    data: Path = Path("data")
    out: Path = Path("results")
    epochs: int = 50
    seed: int = HOMEWORK_SEED
    batch_size: Optional[int] = None  # None: the experiment's own default
    limit: Optional[int] = None  # first ``limit`` training samples only
    lr: float = 1e-4  # the homework Trainer's default, for questions 3-5
    lrs: Tuple[float, ...] = (0.01, 1e-4, 1e-8)
    force: bool = False
    resume: bool = False
    sequential: bool = False
    progress: bool = True
    download: bool = True
    device: str = "cpu"
    command: str = "fn-trainer"
    parallel: Optional[str] = None  # --parallel: "data", or None for one process
    rank: int = 0  # this process's rank in a torchrun launch (0: the one that writes)


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``name`` names its files; ``label`` names it in figures."""

    name: str
    label: str
    network_type: str
    config: NetworkConfiguration
    lr: float
    normalization: bool
    batch_size: int
    epochs: int
    seed: int

    def identity(self, data_fingerprint: str) -> Dict[str, Any]:
        """Everything the result depends on (not the name or label)."""
        return {
            "network_type": self.network_type, "config": self.config._asdict(),
            "lr": self.lr, "normalization": self.normalization, "batch_size": self.batch_size,
            "epochs": self.epochs, "seed": self.seed, "activation": "relu", "optimizer": "adam",
            "data": data_fingerprint,
        }

    def config_hash(self, data_fingerprint: str) -> str:
        """First 12 hex digits of the SHA-256 of ``identity`` as canonical JSON."""
        text = json.dumps(self.identity(data_fingerprint), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class RunRecord:
    """A finished run as stored on disk. ``logs`` follow ``fn_trainer.training.fit.LOG_KEYS``
    (non-finite values stored as ``None``); ``diverged`` is ``None`` or the reason."""

    spec: RunSpec
    config_hash: str
    n_params: int
    logs: Dict[str, List[Optional[float]]]
    diverged: Optional[str]
    wall_time_s: float
    trainer: str = "fit"
    path: Optional[Path] = field(default=None, compare=False)

    def curve(self, key: str) -> List[Optional[float]]:
        return list(self.logs.get(key, []))

    def final(self, key: str = "validation_accuracy") -> Optional[float]:
        values = self.curve(key)
        return values[-1] if values else None

    def best(self, key: str = "validation_accuracy") -> Tuple[Optional[float], Optional[int]]:
        """Highest finite value of ``logs[key]`` and its epoch (index; 0 = before training)."""
        finite = [(v, i) for i, v in enumerate(self.curve(key)) if v is not None]
        if not finite:
            return None, None
        v, i = max(finite, key=lambda t: (t[0], -t[1]))
        return v, i

    def to_json(self) -> Dict[str, Any]:
        spec = dataclasses.asdict(self.spec)
        spec["config"] = self.spec.config._asdict()
        return {"spec": spec, "config_hash": self.config_hash, "n_params": self.n_params,
                "logs": self.logs, "diverged": self.diverged, "wall_time_s": self.wall_time_s,
                "trainer": self.trainer}

    @classmethod
    def from_json(cls, data: Dict[str, Any], path: Optional[Path] = None) -> "RunRecord":
        spec = dict(data["spec"])
        spec["config"] = NetworkConfiguration(**{k: tuple(v) for k, v in spec["config"].items()})
        return cls(RunSpec(**spec), data["config_hash"], data["n_params"], data["logs"],
                   data["diverged"], data["wall_time_s"], data.get("trainer", "fit"), path)


SPEC_TYPES = {"name": str, "label": str, "network_type": str, "config": dict, "lr": (int, float),
              "normalization": bool, "batch_size": int, "epochs": int, "seed": int}
RECORD_TYPES = {"spec": dict, "config_hash": str, "n_params": int, "logs": dict, "diverged": (str, type(None)),
                "wall_time_s": (int, float), "trainer": str}


def _typed(value: Any, types: Any) -> bool:
    # JSON has no int/bool distinction in Python's eyes: True is an int, and no count is True.
    return isinstance(value, types) and (types is bool or not isinstance(value, bool))


def record_problem(data: Any) -> Optional[str]:
    """What makes ``data`` an invalid stored run record, or ``None``.

    Checked: exactly the known fields (``trainer`` optional) and spec fields, and their
    types; a configuration of lists of integers; values in range (``lr`` finite > 0,
    ``batch_size >= 1``, ``epochs >= 0``, ``n_params >= 0``, ``wall_time_s`` finite
    >= 0); logs with exactly ``LOG_KEYS``, finite numbers or ``None`` (non-finite),
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
            if key not in where and not (key == "trainer" and where is data):
                return f"{what} has no {key!r}"
            if key in where and not _typed(where[key], types):
                return f"its {key!r} is {where[key]!r}, of the wrong type"
    spec, logs = data["spec"], data["logs"]
    if set(spec["config"]) != set(NetworkConfiguration._fields) or not all(
            isinstance(v, list) and all(_typed(i, int) for i in v) for v in spec["config"].values()):
        return f"its spec's config is not a network configuration: {spec['config']!r}"
    problem = _range_problem(spec, data)
    if problem is not None:
        return problem
    if set(logs) != set(LOG_KEYS):
        return f"its logs have the keys {sorted(logs)}, expected {sorted(LOG_KEYS)}"
    for key, values in logs.items():
        if not isinstance(values, list) or not all(v is None or _typed(v, (int, float)) for v in values):
            return f"its logs[{key!r}] is not a list of numbers"
        low, high = (0.0, 1.0) if key.endswith("_accuracy") else (0.0, math.inf)
        bad = [v for v in values if v is not None and not (math.isfinite(v) and low <= v <= high)]
        if bad:
            return f"its logs[{key!r}] holds {bad[0]!r}, expected finite numbers in [{low}, {high}] or null"
    n = len(logs["validation_accuracy"])
    epochs = spec["epochs"]
    complete = n == epochs + 1 or (data["diverged"] is not None and 1 <= n <= epochs + 1)
    if not complete or any(len(v) != (n - 1 if k == "train_gradient_norm" else n) for k, v in logs.items()):
        return (f"its logs have {sorted((k, len(v)) for k, v in logs.items())} entries, expected "
                f"{epochs + 1} per metric and {epochs} gradient norms for {epochs} epochs")
    return None


def _range_problem(spec: Dict[str, Any], data: Dict[str, Any]) -> Optional[str]:
    """Which number of a record (its types already checked) is out of range, or ``None``."""
    checks = (("spec's lr", spec["lr"], lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
              ("spec's batch_size", spec["batch_size"], lambda v: v >= 1, "an integer >= 1"),
              ("spec's epochs", spec["epochs"], lambda v: v >= 0, "an integer >= 0"),
              ("n_params", data["n_params"], lambda v: v >= 0, "an integer >= 0"),
              ("wall_time_s", data["wall_time_s"], lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"))
    for what, value, ok, expected in checks:
        if not ok(value):
            return f"its {what} is {value!r}, expected {expected}"
    return None


def finite_logs(logs: Dict[str, Sequence[float]]) -> Dict[str, List[Optional[float]]]:
    """Logs with NaN/inf replaced by ``None`` (JSON has no NaN)."""
    return {k: [float(v) if math.isfinite(v) else None for v in vs] for k, vs in logs.items()}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (strict JSON: no NaN)."""
    write_text(path, json.dumps(data, indent=1, allow_nan=False))


class Context:
    """Settings plus the data, loaded once and shared by every run of a command."""

    def __init__(self, settings: Settings, echo: Optional[Callable[[str], None]] = None,
                 warn: Optional[Callable[[str], None]] = None):
        self.settings = settings
        # Flushed at once: a run's summary line must reach a log file as the run ends.
        self.echo = echo or (lambda line: print(line, flush=True))
        self.warn = warn or print_warning
        self._splits: Optional[Splits] = None
        self._prepared: Dict[bool, Tuple[Split, Split]] = {}
        self._fingerprint: Optional[str] = None

    @property
    def out(self) -> Path:
        return Path(self.settings.out)

    def folder(self, name: str) -> Path:
        """``<out>/<name>``, created."""
        path = safe_path(self.out, name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def splits(self) -> Splits:
        """Train (first ``limit`` samples), validation and test splits, raw 0-255 pixels."""
        if self._splits is None:
            s = load_fashion_mnist(self.settings.data, download=self.settings.download)
            if self.settings.limit is not None:
                s = Splits(Split(s.train.X[:self.settings.limit], s.train.y[:self.settings.limit]),
                           s.valid, s.test)
            self._splits = s
        return self._splits

    @property
    def fingerprint(self) -> str:
        """A short hash of the training set (size, labels, first images): results from
        other data never count as done."""
        if self._fingerprint is None:
            train = self.splits.train
            h = hashlib.sha256(repr(tuple(train.X.shape)).encode())
            h.update(train.y.numpy().tobytes())
            h.update(train.X[:64].numpy().tobytes())
            h.update(self.splits.valid.y.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def data(self, normalization: bool) -> Tuple[Split, Split]:
        """``(train, valid)``, normalised with the training statistics if asked, on the device."""
        if normalization not in self._prepared:
            s = self.splits
            train, valid = s.train, s.valid
            if normalization:
                train, valid, _ = normalize(s.train, s.valid, s.test)
            device = torch.device(self.settings.device)
            self._prepared[normalization] = tuple(Split(X.to(device), y.to(device)) for X, y in (train, valid))
        return self._prepared[normalization]

    def result_path(self, spec: RunSpec) -> Path:
        return safe_path(self.folder(RUNS_DIR), f"{spec.name}-{spec.config_hash(self.fingerprint)}.json")

    def checkpoint_path(self, spec: RunSpec) -> Path:
        return safe_path(self.folder(RUNS_DIR), f"{spec.name}-{spec.config_hash(self.fingerprint)}.checkpoint.pt")


def load_record(path: Path, warn: Optional[Callable[[str], None]] = None) -> Optional[RunRecord]:
    """The stored record at ``path``, or ``None`` if it is absent, unreadable or invalid
    (then the run is trained again); ``warn`` is told why a present file was ignored."""
    try:
        # No link (records are written by write_atomically, never as links) and nothing
        # but a regular file: a FIFO there would block the command forever.
        data = json.loads(read_regular_file(path, follow_links=False).decode("utf-8"))
        problem = record_problem(data)
        if problem is not None:
            raise ValueError(problem)
        return RunRecord.from_json(data, path)
    except FileNotFoundError:
        return None
    # JSONDecodeError and UnicodeDecodeError are ValueErrors; the structural errors are a
    # second line of defence behind record_problem: whatever the file holds, it is invalid,
    # never the end of the command.
    except (OSError, ValueError, RecursionError, TypeError, KeyError, AttributeError) as e:
        if warn is not None:
            reason = " ".join(str(e).split()) or type(e).__name__
            warn(f"ignoring the run record {path}: {reason}; it is trained again")
        return None


def summary(record: RunRecord, skipped: bool = False) -> str:
    """One line about a finished run."""
    best, epoch = record.best()
    final = record.final()
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    status = f"DIVERGED ({record.diverged})" if record.diverged else "ok"
    how = "already done, skipped" if skipped else f"{record.wall_time_s:.1f} s"
    return (f"{record.spec.name}: {status}; validation accuracy final {fmt(final)}, best "
            f"{fmt(best)} (epoch {epoch}); {record.n_params:,} params; {how}")


def execute(ctx: Context, specs: Sequence[RunSpec],
            train_group: Optional[Callable[[Context, List[RunSpec]], List[Tuple[FitResult, float, str]]]] = None,
            ) -> List[RunRecord]:
    """Records for ``specs``, in order: stored ones unless ``force``, the others trained.

    ``train_group(ctx, pending) -> [(FitResult, wall_time_s, trainer_name)]`` trains the
    pending runs together (e.g. several learning rates in one vmapped step); by default
    each is trained alone with ``fit``. Each record is written as soon as it exists.
    """
    records: Dict[int, RunRecord] = {}
    pending: List[int] = []
    for i, spec in enumerate(specs):
        stored = None if ctx.settings.force else load_record(ctx.result_path(spec), ctx.warn)
        if stored is not None and stored.config_hash == spec.config_hash(ctx.fingerprint):
            stored.spec = spec  # the label may have been reworded since
            records[i] = stored
            ctx.echo(summary(stored, skipped=True))
        else:
            pending.append(i)
    if pending and train_group is not None:
        results = train_group(ctx, [specs[i] for i in pending])
        for i, (result, wall, trainer) in zip(pending, results):
            records[i] = store(ctx, specs[i], result, wall, trainer)
    else:
        for i in pending:
            result, wall, trainer = train_one(ctx, specs[i])
            records[i] = store(ctx, specs[i], result, wall, trainer)
    return [records[i] for i in range(len(specs))]


def train_one(ctx: Context, spec: RunSpec) -> Tuple[FitResult, float, str]:
    """Train ``spec`` with ``fit`` from parameters initialised by ``spec.seed``, writing a
    checkpoint every epoch (continued with ``--resume`` after an interruption); the step
    is compiled when the run is long enough to repay it. Returns the result, the wall
    time and how it was trained (``"fit"`` or ``"fit (compiled)"``). With ``--parallel
    data`` every rank trains it, each on its slice of every minibatch, and rank 0 alone
    writes the checkpoint (``fn_trainer.app.parallel``)."""
    net = build_network(spec.network_type, spec.config, n_classes=N_CLASSES)
    device = torch.device(ctx.settings.device)
    params = {k: v.to(device) for k, v in net.init(spec.seed).items()}
    optimizer = adam(spec.lr)
    train, valid = ctx.data(spec.normalization)
    step = make_step(net.apply, optimizer)
    compiled = worth_compiling(spec.epochs, train[0].shape[0], spec.batch_size)
    trainer = "fit (compiled)" if compiled else "fit"
    if ctx.settings.parallel == "data":
        step, trainer = data_parallel_run(ctx, spec, net, optimizer, compiled)
    elif compiled:  # the forward written for Inductor; the odd last minibatch runs the plain one
        step = compile_step(make_step(inductor_apply(net), optimizer), eager=step)
    start = time.perf_counter()
    result = fit(step, make_evaluate(net.apply), params, optimizer.init(params),
                 train, valid, epochs=spec.epochs, batch_size=spec.batch_size, n_classes=N_CLASSES,
                 seed=spec.seed, progress=ctx.settings.progress, desc=spec.name,
                 checkpoint=ctx.checkpoint_path(spec), resume=ctx.settings.resume,
                 config=spec.identity(ctx.fingerprint), write_checkpoint=ctx.settings.rank == 0)
    return result, time.perf_counter() - start, trainer


def store(ctx: Context, spec: RunSpec, result: FitResult, wall_time_s: float, trainer: str) -> RunRecord:
    """Write the run's record to its result file and print its summary line."""
    n_params = sum(int(v.numel()) for v in result.params.values())
    record = RunRecord(spec, spec.config_hash(ctx.fingerprint), n_params, finite_logs(result.logs),
                       result.diverged, wall_time_s, trainer, ctx.result_path(spec))
    write_json(record.path, record.to_json())
    ctx.checkpoint_path(spec).unlink(missing_ok=True)
    ctx.echo(summary(record))
    return record


def network_label(network: str, n_params: int) -> str:
    """``"<network> (269,322 params)"``."""
    return f"{network} ({n_params:,} params)"


def fmt_lr(lr: float) -> str:
    """A learning rate as written in names and legends: 0.01, 0.0001, 1e-08."""
    return f"{lr:g}"


def runs_table(records: Sequence[RunRecord]) -> str:
    """Markdown table: per run its network, settings, final/best accuracies, status, time
    ("shared": trained together with others in one vmapped step, the group's time)."""
    def f(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    rows = []
    for r in records:
        best, epoch = r.best()
        s = r.spec
        rows.append([s.label, f"{r.n_params:,}", fmt_lr(s.lr), "on" if s.normalization else "off",
                     s.batch_size, s.epochs, f(r.final("train_accuracy")), f(r.final()),
                     f"{f(best)} (epoch {epoch})", r.diverged.split(":")[0] if r.diverged else "ok",
                     f"{r.wall_time_s:.1f}" + (" (shared)" if r.trainer.startswith("fit_sweep") else "")])
    return markdown_table(["run", "params", "lr", "normalisation", "batch", "epochs",
                           "final train acc", "final valid acc", "best valid acc", "status",
                           "wall time (s)"], rows)
