"""The ``fn-trainer`` command line: one subcommand per experiment of the homework's
section 2, ``all`` for every one, ``calibrate``, ``export-solution`` and ``grade``.

Exit status: 0 on success; 2 with one line ``fn-trainer: error: <message>`` on stderr
for bad arguments or data; 130 on Ctrl-C and 143 on SIGTERM (the interrupted run keeps
its checkpoint, continued with ``--resume``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import ContextManager, Dict, List, Optional, Sequence

import torch

from ..core.checks import SEED_LIMIT, check_positive_float, check_positive_int, check_seed
from ..core.optim import check_fits_dtype
from ..training.distributed import MIN_RANK_TIMEOUT_S, WAIT_LIMIT_S
from . import PROG
from .experiments import EXPERIMENTS, Experiment
from .experiments.context import Context, Settings
from .experiments.formatting import fmt_lr
from .signals import on_sigterm

ALL = "all"  # the command that runs every experiment
CALIBRATE = "calibrate"  # the command that measures this CPU's choices (fn_trainer.speed.calibration)
DEFAULTS = Settings()  # an option that sets a field of Settings has the field's default
PARALLEL_MODES = ("data", "population")  # fn_trainer.app.parallel
MIN_LIMIT = 2  # training samples: normalisation estimates a standard deviation from them
# a sanity bound, far above any report's need: a typo's --seeds 100000000 is refused at once
# instead of filling the memory with run specs before any training
MAX_SEEDS = 10_000


def _help(experiment: Experiment) -> str:
    batch = "" if experiment.batch_size is None else f" (batch {experiment.batch_size})"
    return f"{experiment.summary}{batch}."


def _listing(names: Sequence[str]) -> str:
    """``"a, b and c"``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


HELP = {**{name: _help(e) for name, e in EXPERIMENTS.items()},
        ALL: f"Every experiment ({', '.join(EXPERIMENTS)}), in order, into one report."}
TRAINED = {name: e for name, e in EXPERIMENTS.items() if e.batch_size is not None}  # the experiments that train
TRAINING = (*TRAINED, ALL)  # the commands that train


class Parser(argparse.ArgumentParser):
    """argparse with the command line's one-line errors: ``fn-trainer: error: <message>``
    on stderr and status 2, like every other bad argument (argparse would print the usage too)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    text = ("Measure this CPU's speed choices (when a run compiles its step, from how many channels a "
            "layer uses Winograd products, how a CNN run evaluates) into OUT/calibration.json; a few minutes "
            "on 2 cores. "
            "Training commands use them, and `all` measures them first when OUT has none for this CPU "
            "and a run has 1,000 steps or more.")
    p = sub.add_parser(CALIBRATE, help=text, description=text)
    p.add_argument("--out", default=str(DEFAULTS.out), metavar="DIR",
                   help="output folder that holds calibration.json (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch, as training will use them (default: torch's choice)")
    p = sub.add_parser("export-solution", help="Write the homework's standalone solution.py.",
                       description="Write the homework's standalone solution.py to OUT.")
    p.add_argument("out_path", metavar="OUT", type=Path, help="the .py file to write")
    from .grading import command as grading_command

    grading_command.add_parser(sub)
    return parser


def _add_common(p: argparse.ArgumentParser) -> None:
    # str, not Path, as --out: an empty --data must be refused, not taken as "."
    p.add_argument("--data", default=str(DEFAULTS.data), metavar="DIR",
                   help="torchvision root of Fashion-MNIST (FashionMNIST/raw/*); downloaded there "
                        "when missing and online (default: %(default)s)")
    # str, not Path: Path("") is ".", and an empty --out must be refused, not taken as "."
    p.add_argument("--out", default=str(DEFAULTS.out), metavar="DIR",
                   help="output folder for logs, figures and report.md (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="seed of every initialisation (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N training samples (default: all)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; fail if the data is not in --data")


def _add_training(p: argparse.ArgumentParser, name: str) -> None:
    """The training options of command ``name``; ``--lrs`` and ``--lr`` where its experiments use them."""
    runs = TRAINED.values() if name == ALL else [TRAINED[name]]
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="epochs per run (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=DEFAULTS.seeds, metavar="K",
                   help="runs per configuration, initialised from seeds --seed, --seed + 1, ...; "
                        "they train together in one vmapped step, and the report gives their mean ± std "
                        "and confidence intervals of the differences it draws (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"minibatch size (default: {_batch_sizes()})")
    if any(e.sweep for e in runs):
        p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULTS.lrs), metavar="LR",
                       help="learning rates of the sweep (default: %(default)s)")
        p.add_argument("--sequential", action="store_true",
                       help="train the sweep's runs (learning rates, normalisations, seeds) one after the "
                            "other with plain fit instead of together in one vmapped step")
    if not all(e.sweep for e in runs):
        single = [n for n, e in TRAINED.items() if not e.sweep]
        p.add_argument("--lr", type=float, default=DEFAULTS.lr,
                       help=f"learning rate of {_listing(single)} (default: %(default)s, the homework "
                            "Trainer's default)")
    p.add_argument("--force", action="store_true",
                   help="retrain runs whose results an earlier command stored (a run this command has trained is reused)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run, or the runs trained together, from its checkpoint "
                        "instead of restarting it")
    p.add_argument("--device", default=DEFAULTS.device, help="torch device to train on (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch, at most the machine's CPU count (default: torch's "
                        "choice); 1 is much faster on a busy machine, where more threads wait for each other")
    p.add_argument("--keep-denormals", dest="flush_denormals", action="store_false",
                   help="compute with subnormal floats instead of flushing them to zero (slower once "
                        "Adam's moments decay below 1e-38; see fn_trainer.speed.denormals)")
    p.add_argument("--default-malloc", dest="steady_malloc", action="store_false",
                   help="leave glibc's malloc thresholds adaptive instead of fixing them so that big "
                        "buffers are reused (slower and less steady; see fn_trainer.speed.malloc)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--parallel", choices=PARALLEL_MODES, default=DEFAULTS.parallel,
                   help="under torchrun: data: every run over all processes, each on its slice of every "
                        "minibatch; population: a population's members (seeds, learning rates) split over "
                        "the processes. Default under torchrun: populations split their members, single "
                        "runs their minibatches. Rank 0 alone prints and writes")
    p.add_argument("--rank-timeout", type=float, default=DEFAULTS.rank_timeout, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others when joining them and within a "
                        "training step before it stops with an error (at least 1); a rank done with its share waits for the others' work as "
                        "long as it takes, and a rank that dies is noticed at once (default: %(default)s)")


def _batch_sizes() -> str:
    """Each experiment's default batch size: ``"128 for lr-sweep, depth and cnn; 256 for cnn-shapes"``."""
    names: Dict[int, List[str]] = {}
    for name, e in TRAINED.items():
        names.setdefault(e.batch_size, []).append(name)
    return "; ".join(f"{size} for {_listing(group)}" for size, group in names.items())


def validate(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the option for any out-of-range value; create ``--out``."""

    check_seed("--seed", args.seed)
    if hasattr(args, "seeds"):
        check_positive_int("--seeds", args.seeds)
        if args.seeds > MAX_SEEDS:
            raise ValueError(f"--seeds must be at most {MAX_SEEDS:,}, got {args.seeds:,}")
        if args.seed + args.seeds > SEED_LIMIT:
            raise ValueError(f"--seeds {args.seeds} from --seed {args.seed} reaches seed {args.seed + args.seeds - 1}, "
                             f"above the largest seed 2**32 - 1 = {SEED_LIMIT - 1}")
    for option, value, minimum in (("--limit", args.limit, MIN_LIMIT), ("--epochs", getattr(args, "epochs", None), 0),
                                   ("--batch-size", getattr(args, "batch_size", None), 1)):
        if value is not None:  # None: not given (all samples, the experiment's batch size) or not offered here
            check_positive_int(option, value, minimum=minimum)
    # the command's networks are float32 (Network.init's default): a learning rate outside
    # its normal range would fail only when its run starts, after the runs before it
    if hasattr(args, "lr"):
        check_fits_dtype("--lr", check_positive_float("--lr", args.lr), torch.float32)
    lrs = getattr(args, "lrs", ())
    for lr in lrs:
        check_fits_dtype("--lrs", check_positive_float("--lrs", lr), torch.float32)
    repeated = sorted({lr for lr in lrs if lrs.count(lr) > 1})
    if repeated:  # one configuration twice would count its runs as twice the seeds
        raise ValueError(f"--lrs must name each learning rate once, got {_listing([fmt_lr(lr) for lr in repeated])} "
                         "more than once")
    written: Dict[str, List[float]] = {}
    for lr in lrs:
        written.setdefault(fmt_lr(lr), []).append(lr)
    alike = [(text, values) for text, values in written.items() if len(values) > 1]
    if alike:  # run names, legends and tables write a learning rate this way: they could not be told apart
        text, values = alike[0]
        raise ValueError(f"--lrs {' and '.join(map(repr, values))} are both written {text} in run names and the "
                         "report: give learning rates that differ in their first 6 significant digits")
    if hasattr(args, "rank_timeout"):
        check_positive_float("--rank-timeout", args.rank_timeout)
        if args.rank_timeout < MIN_RANK_TIMEOUT_S:  # below a millisecond torch's clock reads 0: no rank joins
            raise ValueError(f"--rank-timeout must be at least {MIN_RANK_TIMEOUT_S:g} second, got {args.rank_timeout:g}")
        if args.rank_timeout > WAIT_LIMIT_S:
            raise ValueError(f"--rank-timeout must be at most {WAIT_LIMIT_S:,} seconds (a year), "
                             f"got {args.rank_timeout:g}")
    if hasattr(args, "device"):
        _check_device(args.device)
    _check_threads(getattr(args, "threads", None))
    args.data = _checked_data(args.data)
    args.out = _checked_out(args.out)


def _checked_data(data: str) -> Path:
    """``--data`` as a ``Path``: a UTF-8 folder name; an empty one is refused, not taken as "."
    (a download would land in the current folder)."""
    _check_utf8("--data", data)
    if not str(data).strip():
        raise ValueError("--data must name a folder, got an empty string")
    return Path(data)


def _checked_out(out: str) -> Path:
    """``--out`` as a ``Path``: a UTF-8 name of a folder that is created if missing and writable;
    ``~`` is expanded, as in ``--data`` (``--out=~/x`` reaches no shell that would: a folder
    named ``~`` is one that ``rm -rf ~`` would be typed to remove)."""
    from ..core.paths import ensure_writable_dir

    _check_utf8("--out", out)
    if not str(out).strip():
        raise ValueError("--out must name a folder, got an empty string")
    try:
        return ensure_writable_dir(Path(out).expanduser(), create=False)  # made by its first write
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


BASH_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one line a shell takes back: ``shlex.join``, except that an argument
    holding an ASCII control character (a line break) is written in bash's ``$'...'`` form
    with those escaped (``\\n``, ``\\xHH``), every other character as it is: the report
    prints the command on one line."""
    def quoted(arg: str) -> str:
        if not any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
            return shlex.quote(arg)
        return "$'" + "".join(BASH_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                              for c in arg) + "'"

    return " ".join(quoted(arg) for arg in argv)


def settings_of(args: argparse.Namespace, command: str, rank: int = 0, device: Optional[str] = None,
                parallel: Optional[str] = None) -> Settings:
    """The experiments' ``Settings`` from parsed arguments: each option sets the field of
    its name, a field without an option in this subcommand keeps its default, and
    ``command`` is the whole command line (``args.command`` is only the subcommand). For
    rank ``rank`` of a torchrun launch in mode ``parallel`` (default ``--parallel``),
    computing on ``device`` (default ``--device``): only rank 0 shows progress and downloads."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if f.name not in ("command", "rank") and hasattr(args, f.name)}
    if "lrs" in given:
        given["lrs"] = tuple(given["lrs"])
    if rank != 0:
        given.update(progress=False, download=False)
    if device is not None:
        given["device"] = device
    if parallel is not None:
        given["parallel"] = parallel
    return Settings(**given, command=command, rank=rank)


def run_experiments(args: argparse.Namespace, command: str) -> int:
    import torch

    from ..speed.calibration import DEFAULTS as UNCALIBRATED
    from ..speed.calibration import load_calibration
    from ..speed.denormals import denormals_flushed, flush_denormals
    from ..speed.malloc import steady_malloc
    from .experiments import experiment
    from .report import REPORT_FILE

    validate(args)
    quiet_cuda_home()
    from .parallel import check_shared_out, detect, serve, session, share_calibration

    launch, mode = detect(getattr(args, "parallel", None))
    names = list(EXPERIMENTS) if args.command == ALL else [args.command]
    if getattr(args, "steady_malloc", True):
        steady_malloc()
    threads_before, flushed_before = torch.get_num_threads(), denormals_flushed()
    tf32_before = torch.backends.cudnn.allow_tf32
    try:  # the threads, the subnormal mode and TF32 are the caller's again after the command
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        flush_denormals(getattr(args, "flush_denormals", True))  # after --threads: it sets the threads in use
        # float32 convolutions on a GPU, as its matrix products are by default: cuDNN's TF32
        # would round a CNN's eager step unlike its compiled one (products) and the CPU's
        torch.backends.cudnn.allow_tf32 = False
        with session(launch, getattr(args, "device", DEFAULTS.device), getattr(args, "rank_timeout",
                                                                             DEFAULTS.rank_timeout)) as device:
            ctx = Context(settings_of(args, command, launch.rank if launch else 0, device, mode),
                          warn=lambda line: print(f"{PROG}: warning: {line}", file=sys.stderr, flush=True))
            if launch is not None:
                check_shared_out(ctx)  # one folder for every rank's checkpoints and records
                share_calibration(ctx)  # rank 0's, for every rank to decide alike
            elif (args.command == ALL and torch.device(device).type == "cpu"
                  and load_calibration(ctx.calibration_path) is None
                  and longest_run_steps(ctx) >= min(UNCALIBRATED.compile_min_steps.values())):
                print(f"{PROG}: no calibration for this CPU in {args.out}: measuring it first", file=sys.stderr,
                      flush=True)
                try:
                    calibrate_into(args.out)
                except Terminated:
                    raise
                except KeyboardInterrupt:
                    raise CalibrationInterrupted from None
            if any(name in TRAINED for name in names):  # the equivariance question has no use for one
                ctx.calibration  # a calibration file that is not one fails here, before any training
            if launch is not None and launch.rank != 0:
                serve(ctx)  # train the runs rank 0 sends; it alone prints and writes
                return 0
            prepare_out(ctx, names)
            for name in names:
                experiment(name).run(ctx)
    finally:
        torch.set_num_threads(threads_before)
        flush_denormals(flushed_before)  # after the threads: it sets those in use
        torch.backends.cudnn.allow_tf32 = tf32_before
    print(f"report: {Path(args.out) / REPORT_FILE}")
    return 0


def prepare_out(ctx: Context, names: Sequence[str]) -> None:
    """Before any training, nothing created yet: every folder the command writes into can
    be a folder inside ``--out`` (a link or a file there is named now, not once the runs
    are trained), every section's path can be replaced, the report's lock can be taken
    (nothing but a file at its name), and the temporaries that writers killed earlier left
    among the run files, in ``--out`` (the report's) and in the command's sections (figures')
    are deleted once stale."""
    from ..core.paths import discard_stale_temporaries
    from .experiments.records import RUNS_DIR
    from .report import check_report_lock, check_section

    discard_stale_temporaries(ctx.folder(RUNS_DIR, create=False, link=True))
    check_report_lock(ctx.out)
    discard_stale_temporaries(ctx.out)
    for name in names:
        discard_stale_temporaries(ctx.folder(name, create=False))
        check_section(ctx.out, name)


class Terminated(KeyboardInterrupt):
    """SIGTERM: a job scheduler's stop, or torchrun's when another process of the launch
    failed. Raised where the process is, like Ctrl-C's ``KeyboardInterrupt``, so that a run in
    progress saves its position on the way out."""


def sigterm_interrupts() -> ContextManager[None]:
    """SIGTERM raises ``Terminated`` while the block runs."""
    def stop(signum, frame):
        raise Terminated

    return on_sigterm(stop)


class CalibrationInterrupted(KeyboardInterrupt):
    """Ctrl-C while ``all`` measured the CPU, before it trained anything."""


def longest_run_steps(ctx: Context) -> int:
    """Training steps of the command's longest run. Loads the data first, so that a missing
    data set fails before minutes of measuring. Below the defaults' compile threshold every
    run of a command trains eagerly without a calibration, and a calibration (minutes) could
    at most make runs of seconds compile: ``all`` measures only above it."""
    from .experiments.training import run_steps  # imports torch: on use

    batch_size = ctx.settings.batch_size or min(e.batch_size for e in TRAINED.values())
    return run_steps(ctx.settings.epochs, len(ctx.splits.train.X), batch_size)


def calibrate_into(out: Path) -> None:
    """Measure this CPU's calibration and store it in ``out``, each measurement said on stderr."""
    from ..speed.calibration import calibrate, store_calibration
    from .experiments.context import CALIBRATION_FILE
    from .report import report_lock

    calibration = calibrate(log=lambda line: print(f"{PROG}: calibration: {line}", file=sys.stderr, flush=True))
    with report_lock(out):  # the folder's lock: two commands calibrating into it keep both CPUs' entries
        path = store_calibration(out / CALIBRATION_FILE, calibration)
    steps = ", ".join(f"{k} from {v} steps" for k, v in calibration.compile_min_steps.items())
    print(f"{PROG}: calibration for {calibration.cpu}: Winograd from {calibration.winograd_min_channels} "
          f"input channels; compiled steps: {steps}; a CNN's evaluation compiled from "
          f"{calibration.eval_compile_min_rows:,} rows, in chunks of {calibration.eval_chunk}; in {path}",
          file=sys.stderr, flush=True)


def run_calibration(args: argparse.Namespace) -> int:
    from ..speed.calibration import calibrated_cpus
    from .experiments.context import CALIBRATION_FILE

    _check_threads(args.threads)
    args.out = _checked_out(args.out)
    calibrated_cpus(args.out / CALIBRATION_FILE)  # a file that cannot take the result fails before measuring
    import torch

    threads_before = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        calibrate_into(args.out)
    finally:
        torch.set_num_threads(threads_before)
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import export_solution  # imported on use: it reads the package's sources

    print(export_solution(args.out_path, name="OUT"))
    return 0


def quiet_cuda_home() -> None:
    """Silence torch's "No CUDA runtime is found, using CUDA_HOME=..." warning, which every
    compile prints on a machine with CUDA's tools and no GPU: this command's CPU runs need neither."""
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def checkpoints_left(out: object) -> bool:
    """Whether ``out`` (``--out``, checked or not) holds a run's checkpoint, for ``--resume``."""
    from .experiments.records import CHECKPOINT_SUFFIX, RUNS_DIR

    try:
        return any((Path(out) / RUNS_DIR).glob(f"*{CHECKPOINT_SUFFIX}"))
    except (OSError, TypeError):
        return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required: fn-trainer COMMAND ...; fn-trainer --help lists them")
    from ..core.data import DatasetError
    from ..speed.calibration import CalibrationError
    from ..training.distributed import RankLostError
    from .parallel import rank_prefix

    try:
        if args.command == "export-solution":
            return export(args)
        if args.command == CALIBRATE:
            with sigterm_interrupts():
                return run_calibration(args)
        if args.command == "grade":
            from .grading import command as grading_command

            return grading_command.run(args)
        with sigterm_interrupts():
            return run_experiments(args, command_line([PROG, *argv]))
    except Terminated:
        # every rank says it: when rank 0 is the process that failed, the others are all there are
        why = " (torchrun sends it to every process when one fails)" if "TORCHELASTIC_RUN_ID" in os.environ \
            else ""
        if args.command == CALIBRATE:
            kept = "nothing was stored"
        elif checkpoints_left(args.out):  # in a data-parallel run rank 0 alone saves the position
            kept = ("finished runs are saved, rerun with --resume to continue from the last checkpoint" if rank_prefix()
                    else "finished runs and the current position are saved, rerun with --resume to continue")
        else:
            kept = "finished runs are saved, and a rerun trains the others from the start"
        print(f"{PROG}: {rank_prefix()}stopped by SIGTERM{why}; {kept}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt as e:
        if args.command == CALIBRATE:
            print(f"{PROG}: interrupted; nothing was stored", file=sys.stderr)
        elif isinstance(e, CalibrationInterrupted):
            print(f"{PROG}: interrupted while measuring this CPU, before any training; nothing was stored",
                  file=sys.stderr)
        elif not rank_prefix():  # said once, by rank 0, for all ranks
            if checkpoints_left(args.out):
                print(f"{PROG}: interrupted; finished runs are saved, rerun with --resume to continue "
                      "the interrupted one from its checkpoint", file=sys.stderr)
            else:
                print(f"{PROG}: interrupted before any run's first checkpoint; finished runs are saved, and a "
                      "rerun trains the others from the start", file=sys.stderr)
        return 130
    except (DatasetError, ValueError, TypeError, OSError, RankLostError, CalibrationError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, RankLostError):
            message += ("; rerun with --resume to continue from the last checkpoint" if checkpoints_left(args.out)
                        else "; there is no checkpoint to resume from: finished runs are saved, and a rank "
                             "that failed says why")
        print(f"{PROG}: error: {rank_prefix()}{message}", file=sys.stderr)
        return 2
