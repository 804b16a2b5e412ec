"""The ``fn-trainer`` command line: one subcommand per experiment of the homework's
section 2, ``all`` for every one, and ``export-solution``.

Exit status: 0 on success; 2 with one line ``fn-trainer: error: <message>`` on stderr
for bad arguments or data; 130 on Ctrl-C (the interrupted run keeps its checkpoint,
continued with ``--resume``).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..core.config import HOMEWORK_SEED
from .experiments import EXPERIMENTS

PROG = "fn-trainer"
DEFAULT_SEED = HOMEWORK_SEED
DEFAULT_LR = 1e-4
DEFAULT_LRS = (0.01, 1e-4, 1e-8)
PARALLEL_MODES = ("data", "population")  # fn_trainer.app.parallel; population is reserved
DEFAULT_RANK_TIMEOUT = 300.0  # seconds: long enough for rank 0's figures and report between two runs
HELP = {
    "equivariance": "Q1: a conv-only model's equivariance to shifts and 90° rotations (four figures).",
    "lr-sweep": "Q2: MLP 256-256 with learning rates x normalisation off/on (batch 128).",
    "depth": "Q3: MLP 256-256 against a deep 64-unit MLP of solved depth (batch 128).",
    "cnn": "Q4: CNN (16,32,45) with a solved kernel size against the MLP (batch 128).",
    "cnn-shapes": "Q5: question 4's CNN, a deep 1x1-kernel CNN and a shallow 28x28-kernel CNN (batch 256).",
    "all": f"Every experiment ({', '.join(EXPERIMENTS)}), in order, into one report.",
}
TRAINING = (*(name for name in EXPERIMENTS if name != "equivariance"), "all")  # the commands that train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Functional trainer for MLPs and CNNs on Fashion-MNIST: reproduces the "
                    "homework's section-2 experiments as figures, JSON logs and report.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        _add_common(p)
        if name in TRAINING:
            _add_training(p, name)
    p = sub.add_parser("export-solution", help="Write the homework's standalone solution.py.",
                       description="Write the homework's standalone solution.py to OUT.")
    p.add_argument("out_path", metavar="OUT", type=Path, help="the .py file to write")
    from .grading import command as grading_command

    grading_command.add_parser(sub)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path("data"), metavar="DIR",
                   help="torchvision root of Fashion-MNIST (FashionMNIST/raw/*); downloaded there "
                        "when missing and online (default: %(default)s)")
    # str, not Path: Path("") is ".", and an empty --out must be refused, not taken as "."
    p.add_argument("--out", default="results", metavar="DIR",
                   help="output folder for logs, figures and report.md (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of every initialisation (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N training samples (default: all)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; fail if the data is not in --data")


def _add_training(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--epochs", type=int, default=50, help="epochs per run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="minibatch size (default: 128 for lr-sweep, depth and cnn; 256 for cnn-shapes)")
    if name in ("lr-sweep", "all"):
        p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), metavar="LR",
                       help="learning rates of the sweep (default: %(default)s)")
        p.add_argument("--sequential", action="store_true",
                       help="train the sweep's learning rates one after the other with plain fit "
                            "instead of together in one vmapped step")
    if name != "lr-sweep":
        p.add_argument("--lr", type=float, default=DEFAULT_LR,
                       help="learning rate of depth, cnn and cnn-shapes (default: %(default)s, the "
                            "homework Trainer's default)")
    p.add_argument("--force", action="store_true", help="rerun runs whose results already exist")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoint instead of restarting it "
                        "(runs trained one by one; a vmapped lr sweep restarts its group)")
    p.add_argument("--device", default="cpu", help="torch device to train on (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch, at most the machine's CPU count (default: torch's "
                        "choice); 1 is much faster on a busy machine, where more threads wait for each other")
    p.add_argument("--keep-denormals", dest="flush_denormals", action="store_false",
                   help="compute with subnormal floats instead of flushing them to zero (slower once "
                        "Adam's moments decay below 1e-38; see fn_trainer.speed.denormals)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--parallel", choices=PARALLEL_MODES, default=None,
                   help="under torchrun: train every run over all its processes, each on its slice of "
                        "every minibatch (data); rank 0 alone prints and writes (population: not yet)")
    p.add_argument("--rank-timeout", type=float, default=DEFAULT_RANK_TIMEOUT, metavar="SECONDS",
                   help="with --parallel: how long a rank waits for the others (in a step, or for rank "
                        "0's next run) before it stops with an error (default: %(default)s)")


def _check_int(option: str, value: Optional[int], minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, got {value}")


def _check_positive(option: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a positive finite number, got {value}")


def validate(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the option for any out-of-range value; create ``--out``."""
    from ..core.checks import check_seed
    from ..core.paths import ensure_writable_dir

    check_seed("--seed", args.seed)
    # Two samples at least: normalisation estimates a standard deviation from them.
    _check_int("--limit", args.limit, 2)
    _check_int("--epochs", getattr(args, "epochs", None), 0)
    _check_int("--batch-size", getattr(args, "batch_size", None), 1)
    if hasattr(args, "lr"):
        _check_positive("--lr", args.lr)
    for lr in getattr(args, "lrs", ()):
        _check_positive("--lrs", lr)
    if hasattr(args, "device"):
        _check_device(args.device)
    if hasattr(args, "rank_timeout"):
        _check_positive("--rank-timeout", args.rank_timeout)
    _check_threads(getattr(args, "threads", None))
    for option, path in (("--out", args.out), ("--data", args.data)):
        _check_utf8(option, path)
    if not str(args.out).strip():
        raise ValueError("--out must name a folder, got an empty string")
    args.out = Path(args.out)
    try:
        ensure_writable_dir(args.out)
    except ValueError as e:
        raise ValueError(f"--out: {e}") from None


def _check_utf8(option: str, path: os.PathLike | str) -> None:
    """A folder name that is valid UTF-8: the report and the run records write paths as
    text, so a name with other bytes would fail only after the whole run was trained."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{option} must be a UTF-8 path, got {os.fspath(path)!r} (it holds bytes that "
                         "are not UTF-8)") from None


def _check_threads(value: Optional[int]) -> None:
    """``--threads`` in ``[1, CPU count]``: more threads than CPUs only wait for each other,
    and torch's OpenMP pool crashes when asked for tens of thousands."""
    cap = os.cpu_count() or 1
    if value is not None and not 1 <= value <= cap:
        raise ValueError(f"--threads must be between 1 and {cap} (this machine's CPU count), got {value}")


def _check_device(name: str) -> None:
    """``--device``: the CPU, or a CUDA device that this machine has; the trainer runs on
    nothing else (``meta`` holds no data, ``mps`` and the rest are untested)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda' (optionally 'cuda:N'), got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA devices")


def settings_of(args: argparse.Namespace, command: str, rank: int = 0, device: Optional[str] = None):
    """The experiments' ``Settings`` from parsed arguments, for rank ``rank`` of a
    ``--parallel`` launch (only rank 0 shows progress and downloads) computing on ``device``
    (default ``--device``)."""
    from .experiments.runs import Settings

    parallel = getattr(args, "parallel", None)
    return Settings(
        data=args.data, out=args.out, epochs=getattr(args, "epochs", 0), seed=args.seed,
        batch_size=getattr(args, "batch_size", None), limit=args.limit,
        lr=getattr(args, "lr", DEFAULT_LR), lrs=tuple(getattr(args, "lrs", DEFAULT_LRS)),
        force=getattr(args, "force", False), resume=getattr(args, "resume", False),
        # a vmapped sweep is one process's work: with --parallel each run is trained by all ranks
        sequential=getattr(args, "sequential", False) or parallel is not None,
        progress=getattr(args, "progress", True) and rank == 0, download=args.download and rank == 0,
        device=device or getattr(args, "device", "cpu"), command=command, parallel=parallel, rank=rank,
    )


def run_experiments(args: argparse.Namespace, command: str) -> int:
    from ..speed.denormals import denormals_flushed, flush_denormals
    from .experiments import experiment
    from .experiments.runs import Context
    from .parallel import detect, serve, session
    from .report import REPORT_FILE

    validate(args)
    launch = detect(getattr(args, "parallel", None))
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    names = list(EXPERIMENTS) if args.command == "all" else [args.command]
    flushed_before = denormals_flushed()
    flush_denormals(getattr(args, "flush_denormals", True))  # after --threads: it sets the threads in use
    try:
        timeout_s = getattr(args, "rank_timeout", DEFAULT_RANK_TIMEOUT)
        with session(launch, getattr(args, "device", "cpu"), timeout_s) as device:
            ctx = Context(settings_of(args, command, launch.rank if launch else 0, device),
                          warn=lambda line: print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True))
            if launch is not None and launch.rank != 0:
                serve(ctx)  # train the runs rank 0 sends; it alone writes and prints
                return 0
            for name in names:
                experiment(name).run(ctx)
    finally:
        flush_denormals(flushed_before)
    print(f"report: {Path(args.out) / REPORT_FILE}")
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import export_solution  # imported on use: it reads the package's sources

    print(export_solution(args.out_path))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from ..core.data import DatasetError
    from ..training.distributed import RankLostError
    from .parallel import rank_prefix

    try:
        if args.command == "export-solution":
            return export(args)
        if args.command == "grade":
            from .grading import command as grading_command

            return grading_command.run(args)
        return run_experiments(args, shlex.join([PROG, *argv]))
    except KeyboardInterrupt:
        if not rank_prefix():  # said once, by rank 0, for all ranks
            print(f"{PROG}: interrupted; finished runs are saved, rerun with --resume to continue "
                  "the interrupted one from its checkpoint", file=sys.stderr)
        return 130
    except (DatasetError, ValueError, TypeError, OSError, RankLostError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, RankLostError):
            message += "; rerun with --resume to continue from the last checkpoint"
        print(f"{PROG}: error: {rank_prefix()}{message}", file=sys.stderr)
        return 2
