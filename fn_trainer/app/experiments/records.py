"""What a run is and where its result lives: a rerun with the same configuration reuses
the stored result.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...core.config import NetworkConfiguration
from ...core.data import N_CLASSES
from ...core.networks import build_network
from ...core.paths import read_regular_file, safe_path, write_text
from .context import Context
from .record_checks import record_problem

RUNS_DIR = "runs"
HASH_DIGITS = 12  # of a run's configuration hash, in its file names
CHECKPOINT_SUFFIX = ".checkpoint.pt"
SWEEP_TRAINER = "fit_sweep"  # how the runs of a one-seed lr sweep's group begin their ``trainer``
POPULATION_TRAINER = "fit_population"  # how the runs of a population (several seeds) begin theirs
TOGETHER_TRAINERS = (SWEEP_TRAINER, POPULATION_TRAINER)  # runs that shared one vmapped step


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
        """First ``HASH_DIGITS`` hex digits of the SHA-256 of ``identity`` as canonical JSON."""
        text = json.dumps(self.identity(data_fingerprint), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]


@dataclass
class RunRecord:
    """A finished run as stored on disk. ``logs`` follow ``fn_trainer.training.loop.LOG_KEYS``
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

    @property
    def trained_together(self) -> bool:
        """Whether the run shared one vmapped step with others: ``wall_time_s`` is the group's."""
        return self.trainer.startswith(TOGETHER_TRAINERS)

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


def finite_logs(logs: Dict[str, Sequence[float]]) -> Dict[str, List[Optional[float]]]:
    """Logs with NaN/inf replaced by ``None`` (JSON has no NaN)."""
    return {k: [float(v) if math.isfinite(v) else None for v in vs] for k, vs in logs.items()}


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (strict JSON: no NaN)."""
    write_text(path, json.dumps(data, indent=1, allow_nan=False))


def result_path(ctx: Context, spec: RunSpec) -> Path:
    """``<out>/runs/<name>-<hash>.json``."""
    return _run_file(ctx, spec, ".json")


def checkpoint_path(ctx: Context, spec: RunSpec) -> Path:
    """``<out>/runs/<name>-<hash>.checkpoint.pt``: the unfinished run, continued with ``--resume``."""
    return _no_link(_run_file(ctx, spec, CHECKPOINT_SUFFIX))


def population_checkpoint_path(ctx: Context, specs: Sequence[RunSpec]) -> Path:
    """``<out>/runs/<first name>-x<K>-<hash>.checkpoint.pt``: the unfinished population of
    ``specs`` (trained together), continued with ``--resume``; the hash covers every
    member's configuration hash, in order."""
    digest = hashlib.sha256(" ".join(sp.config_hash(ctx.fingerprint) for sp in specs).encode())
    name = f"{specs[0].name}-x{len(specs)}-{digest.hexdigest()[:HASH_DIGITS]}{CHECKPOINT_SUFFIX}"
    return _no_link(safe_path(ctx.folder(RUNS_DIR, link=True), name))


def _no_link(checkpoint: Path) -> Path:
    """``checkpoint``, unless a symbolic link is there: the command reads no checkpoint
    through one, as it reads no run record through one (a link to nothing would also make
    ``--resume`` start afresh unsaid)."""
    if checkpoint.is_symlink():
        raise ValueError(f"the checkpoint {str(checkpoint)!r} is a symbolic link: fn-trainer reads no checkpoint "
                         "through a link; remove it")
    return checkpoint


def other_checkpoints(path: Path) -> List[Path]:
    """The checkpoints beside ``path`` (of ``checkpoint_path`` or ``population_checkpoint_path``)
    of the same run or population under other settings or data (another hash, another
    epoch count: the ``-e<epochs>-`` of its name), or of a population it is the first
    member of, or that is its first member (another ``--seeds``, or a population split
    over ranks, another member count)."""
    name = path.name[:-len(CHECKPOINT_SUFFIX)].rsplit("-", 1)[0]
    population = re.fullmatch(r"(.*)-x[0-9]+", name)
    run = population.group(1) if population else name
    stem = "-e[0-9]+-".join(map(re.escape, re.split(r"-e[0-9]+-", run))) + "(-x[0-9]+)?"
    pattern = re.compile(f"{stem}-[0-9a-f]{{{HASH_DIGITS}}}{re.escape(CHECKPOINT_SUFFIX)}")
    try:
        return sorted(p for p in path.parent.iterdir() if p != path and pattern.fullmatch(p.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _run_file(ctx: Context, spec: RunSpec, suffix: str) -> Path:
    name = f"{spec.name}-{spec.config_hash(ctx.fingerprint)}{suffix}"  # the data first: a folder only for runs
    return safe_path(ctx.folder(RUNS_DIR, link=True), name)


def stored_record(ctx: Context, spec: RunSpec) -> Optional[RunRecord]:
    """``spec``'s stored record if one exists for its configuration and data, else ``None``
    (``ctx.warn`` is told why a present file was ignored)."""
    path = result_path(ctx, spec)
    stored = load_record(path, ctx.warn)
    if stored is None:
        return None
    expected = spec.config_hash(ctx.fingerprint)
    # the file's name carries the hash; the record inside must be that run's (a record
    # copied or edited into another run's file is not)
    found = stored.spec.config_hash(ctx.fingerprint)
    if stored.config_hash != expected or found != expected:
        ctx.warn(f"ignoring the run record {path}: it holds another run's configuration "
                 f"(hash {stored.config_hash}, its spec {found}, expected {expected}); it is trained again")
        return None
    n_params = build_network(spec.network_type, spec.config, n_classes=N_CLASSES).n_params
    if stored.n_params != n_params:  # the report's tables print it
        ctx.warn(f"ignoring the run record {path}: it gives the network {stored.n_params} parameters, its "
                 f"configuration has {n_params}; it is trained again")
        return None
    stored.spec = spec  # the label may have been reworded since
    return stored


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
    except (OSError, ValueError, ArithmeticError, RecursionError, TypeError, KeyError, AttributeError) as e:
        if warn is not None:
            reason = " ".join(str(e).split()) or type(e).__name__
            warn(f"ignoring the run record {path}: {reason}; it is trained again")
        return None
