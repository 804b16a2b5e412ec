"""Training the runs of an experiment: each one alone with ``fit``, or a group together
in one vmapped step (a population of seeds with ``fit_population``, a one-seed lr sweep
with ``fit_sweep``); a stored result is reused instead (with ``--force``, only one stored by
this command), and a fresh one is stored as soon as it exists."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...core.data import N_CLASSES
from ...core.evaluate import Evaluate, make_evaluate
from ...core.networks import Network, build_network
from ...core.optim import adam, exp_log_power
from ...core.paths import discard, unreplaceable_kind
from ...core.step import make_step
from ...training.compiled import compile_evaluate, compile_step
from ...training.distributed import wait_for_all
from ...training.fit import FitResult, fit
from ...training.loop import N_TRAIN_EVAL
from ...training.population import Member, fit_population, fit_sweep
from ..parallel import data_parallel_run, population_parallel_run, share_checkpoints, splits_populations
from .context import Context, Settings
from .formatting import summary
from .records import (
    POPULATION_TRAINER,
    SWEEP_TRAINER,
    RunRecord,
    RunSpec,
    checkpoint_path,
    finite_logs,
    other_checkpoints,
    population_checkpoint_path,
    result_path,
    stored_record,
    write_json,
)

Trained = Tuple[FitResult, str]  # the result (its wall time included) and how it was trained
GroupTrainer = Callable[[Context, List[RunSpec]], List[Trained]]


def run_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """Training steps of a run of ``epochs`` epochs over ``n_train`` samples."""
    return epochs * math.ceil(n_train / batch_size)


def worth_compiling(ctx: Context, network_type: str, epochs: int, n_train: int, batch_size: int) -> bool:
    """Whether a run of ``epochs`` epochs over ``n_train`` samples has enough steps to repay
    compiling its step: this CPU's ``compile_min_steps`` (``ctx.calibration``)."""
    return run_steps(epochs, n_train, batch_size) >= ctx.calibration.compile_min_steps[network_type]


def evaluation(ctx: Context, network: Network, compiled: bool, rows: int) -> Evaluate:
    """How a run evaluates its parameters after every epoch, ``rows`` rows in all (every
    member, every epoch): for a CNN whose step is compiled, with its forward compiled too
    when that many rows repay the compile (this CPU's ``eval_compile_min_rows``), in chunks
    of its ``eval_chunk`` rows; else eagerly (an MLP's eager evaluation is a few products,
    as fast as compiled)."""
    calibration = ctx.calibration
    if compiled and network.network_type == "cnn" and rows >= calibration.eval_compile_min_rows:
        return compile_evaluate(ctx.fast_apply(network), chunk_size=calibration.eval_chunk, eager=network.apply)
    return make_evaluate(network.apply)


def rows_evaluated(epochs: int, n_train: int, n_valid: int, n_members: int = 1) -> int:
    """The rows a run evaluates: before training and after every epoch, each member on the
    first ``N_TRAIN_EVAL`` training rows and on the validation set."""
    return n_members * (epochs + 1) * (min(N_TRAIN_EVAL, n_train) + n_valid)


def execute(ctx: Context, specs: Sequence[RunSpec], train_group: Optional[GroupTrainer] = None) -> List[RunRecord]:
    """Records for ``specs``, in order: stored ones (with ``force``, only those this command
    wrote), the others trained.

    ``train_group(ctx, pending) -> [(FitResult, trainer_name)]`` trains the
    pending runs together (e.g. ``train_together``); by default each is trained alone
    with ``train_one``. Each record is written as soon as it exists.
    """
    records: Dict[int, RunRecord] = {}
    pending: List[int] = []
    for i, spec in enumerate(specs):
        path = result_path(ctx, spec)
        kind = unreplaceable_kind(path, follow_links=True)
        if kind is not None:  # found now, not once the training it would waste is done
            raise ValueError(f"the run record {path} is {kind}, where the run's result is to be written: "
                             "move it away")
        reusable = not ctx.settings.force or path in ctx.written
        stored = stored_record(ctx, spec) if reusable else None
        if stored is not None:
            records[i] = stored
            ctx.echo(summary(stored, skipped=True))
        else:
            pending.append(i)
    # The whole population's checkpoint, when a command stopped between writing its records:
    # resumed, it ends at once and gives the records still missing.
    whole = (population_checkpoint_path(ctx, specs)
             if train_group in WHOLE_GROUP_CHECKPOINTS and specs and not splits_populations(ctx.settings) else None)
    if whole is not None and 0 < len(pending) < len(specs) and whole.exists():
        if ctx.settings.resume:
            pending = list(range(len(specs)))
        else:  # a population's result differs from its members trained apart, in the last bits
            ctx.warn(f"{whole.name} holds the population of these runs, stopped after {len(specs) - len(pending)} "
                     f"of its {len(specs)} records: --resume would take the missing ones from it; now they "
                     "train again without it and may differ from it in the last bits")
    group = [specs[i] for i in pending]
    if pending:
        if train_group not in WHOLE_GROUP_CHECKPOINTS:
            paths = [checkpoint_path(ctx, spec) for spec in group]
        else:  # the whole group's, or each rank's share's
            paths = share_checkpoints(ctx, group) if splits_populations(ctx.settings) else [
                population_checkpoint_path(ctx, group)]
        note_checkpoints(ctx, paths)
        if ctx.settings.resume:
            warn_other_checkpoints(ctx, paths)
    if pending and train_group is not None:
        results = train_group(ctx, group)
        for i, (result, trainer) in zip(pending, results):
            if i not in records:
                records[i] = store(ctx, specs[i], result, trainer)
        # Only once every record is written: until then --resume needs the checkpoint(s).
        discard(population_checkpoint_path(ctx, group))
        if splits_populations(ctx.settings):
            for path in share_checkpoints(ctx, group):
                discard(path)
    else:
        for i in pending:
            result, trainer = train_one(ctx, specs[i])
            records[i] = store(ctx, specs[i], result, trainer)
    if whole is not None and _older_than_records(ctx, whole, specs):
        discard(whole)  # left by a command stopped after its last record: of no use now
    return [records[i] for i in range(len(specs))]


def _older_than_records(ctx: Context, checkpoint: Path, specs: Sequence[RunSpec]) -> bool:
    """Whether ``checkpoint`` exists and every run's record was written after it (a newer
    one, of a ``--force`` command stopped early, is for ``--force --resume`` to continue)."""
    try:
        written = checkpoint.stat().st_mtime_ns
        return all(result_path(ctx, spec).stat().st_mtime_ns > written for spec in specs)
    except FileNotFoundError:
        return False


def note_checkpoints(ctx: Context, paths: Sequence[Path]) -> None:
    """Say which runs continue from an interrupted run's checkpoint (``--resume``) and, without
    ``--resume``, which train from the start over one."""
    for path in paths:
        if not path.is_file():
            continue
        if ctx.settings.resume:
            ctx.echo(f"resuming from the checkpoint {path.name}")
        else:
            ctx.warn(f"{path.name} holds an interrupted run: it trains from the start and replaces it "
                     "(--resume would continue it)")


def warn_other_checkpoints(ctx: Context, paths: Sequence[Path]) -> None:
    """Under ``--resume``: for each checkpoint path missing while checkpoints of the same
    run name are present under another hash (``--limit`` or the data changed since),
    another epoch count or another population size (a changed batch size or seed changes
    the name too, and is not found), say that the run trains from the start, naming them."""
    for path in paths:
        others = [] if path.exists() else other_checkpoints(path)
        if others:
            ctx.warn(f"--resume: no checkpoint {path.name} for these options and data, so it trains from the "
                     f"start; {path.parent} holds {', '.join(p.name for p in others)}, left with other options "
                     "or data")


def train_one(ctx: Context, spec: RunSpec) -> Trained:
    """Train ``spec`` with ``fit`` from parameters initialised by ``spec.seed``, writing a
    checkpoint every epoch (continued with ``--resume`` after an interruption); the step
    is compiled when the run is long enough to repay it. Returns the result and how it
    was trained (``"fit"`` or ``"fit (compiled)"``). With ``--parallel
    data`` every rank trains it, each on its slice of every minibatch, and rank 0 alone
    writes the checkpoint (``fn_trainer.app.parallel``)."""
    net = build_network(spec.network_type, spec.config, n_classes=N_CLASSES)
    device = torch.device(ctx.settings.device)
    params = {k: v.to(device) for k, v in net.init(spec.seed).items()}
    optimizer = adam(spec.lr)
    train, valid = ctx.data(spec.normalization)
    step = make_step(net.apply, optimizer)
    compiled = worth_compiling(ctx, spec.network_type, spec.epochs, train[0].shape[0], spec.batch_size)
    trainer = "fit (compiled)" if compiled else "fit"
    # the forward and powers written for Inductor, the graph made for the full minibatch
    # (a resumed run may start with the short last one, which runs the plain step)
    fast = ((adam(spec.lr, power=exp_log_power), (min(spec.batch_size, train[0].shape[0]), *train[0].shape[1:]))
            if compiled else None)
    if ctx.settings.parallel is not None:  # every rank, each on its slice of every minibatch
        step, trainer = data_parallel_run(ctx, spec, net, optimizer, fast)
    elif fast is not None:
        step = compile_step(make_step(ctx.fast_apply(net), fast[0]), eager=step, guard_closures=False,
                            batch_shape=fast[1], donate=True)
    rows = rows_evaluated(spec.epochs, train[0].shape[0], valid[0].shape[0])
    result = fit(step, evaluation(ctx, net, compiled, rows), params, optimizer.init(params),
                 train, valid, epochs=spec.epochs, batch_size=spec.batch_size, n_classes=N_CLASSES,
                 seed=spec.seed, progress=ctx.settings.progress, desc=spec.name,
                 checkpoint=checkpoint_path(ctx, spec), resume=ctx.settings.resume,
                 config=spec.identity(ctx.fingerprint), write_checkpoint=ctx.settings.rank == 0)
    if ctx.settings.parallel is not None:  # every rank has read the checkpoint before rank 0 deletes it
        wait_for_all("after a run")
    return result, trainer


def train_together(ctx: Context, specs: List[RunSpec]) -> List[Trained]:
    """A ``train_group`` for ``execute``: runs that differ only in their learning rate,
    trained in one vmapped step with ``fit_sweep`` (compiled when long enough),
    checkpointed every epoch as a population is (continued with ``--resume``); the
    wall time is the group's."""
    first = specs[0]
    network = build_network(first.network_type, first.config)
    train, valid = ctx.data(first.normalization)
    compiled = worth_compiling(ctx, first.network_type, first.epochs, train[0].shape[0], first.batch_size)
    results = fit_sweep(network, [sp.lr for sp in specs], train, valid, epochs=first.epochs,
                        batch_size=first.batch_size, seed=first.seed, n_classes=N_CLASSES,
                        progress=ctx.settings.progress, compile=compiled,
                        compiled_apply=ctx.fast_apply(network, vmapped=True) if compiled else None,
                        desc=f"{first.name.split('-lr')[0]} x{len(specs)} lrs",
                        checkpoint=population_checkpoint_path(ctx, specs), resume=ctx.settings.resume,
                        config={"members": [sp.identity(ctx.fingerprint) for sp in specs]})
    rates = f"{len(specs)} learning rate{'s' * (len(specs) != 1)}"
    return [(r, f"{SWEEP_TRAINER} ({rates} together{', compiled' * compiled})") for r in results]


def train_population(ctx: Context, specs: List[RunSpec]) -> List[Trained]:
    """A ``train_group`` for ``execute``: runs of one network, batch size and epoch count
    (differing in seed, learning rate or normalisation) trained as one population with
    ``fit_population``, all in one vmapped step. Each run starts from ``spec.seed``'s
    initialisation with Adam at ``spec.lr``, on its normalisation's data (one data set
    shared by all runs that have it); the step is compiled as in ``train_one`` when the
    run is long enough (with the forward for Inductor that ``vmap`` can trace); the
    population is checkpointed every epoch and continued with ``--resume``. The wall
    time is the population's. Under torchrun (``--parallel population``, or no
    ``--parallel``) the members are split over the ranks (``population_parallel_run``)."""
    if splits_populations(ctx.settings):
        return population_parallel_run(ctx, specs, _train_members)
    return _train_members(ctx, specs)


def _train_members(ctx: Context, specs: List[RunSpec]) -> List[Trained]:
    """``train_population``'s work in one process: ``specs`` in one ``fit_population``."""
    first = specs[0]
    shapes = {(sp.network_type, sp.config, sp.batch_size, sp.epochs) for sp in specs}
    if len(shapes) != 1:
        raise ValueError(f"the runs of a population must share their network, batch size and epochs, got "
                         f"{[sp.name for sp in specs]}")
    network = build_network(first.network_type, first.config, n_classes=N_CLASSES)
    data = [ctx.data(sp.normalization) for sp in specs]
    compiled = worth_compiling(ctx, first.network_type, first.epochs, data[0][0].X.shape[0],
                               first.batch_size)
    rows = rows_evaluated(first.epochs, data[0][0].X.shape[0], data[0][1].X.shape[0], len(specs))
    results = fit_population(network, [Member(sp.seed, sp.lr) for sp in specs], [train for train, _ in data],
                             [valid for _, valid in data], epochs=first.epochs, batch_size=first.batch_size,
                             n_classes=N_CLASSES, compile=compiled,
                             compiled_apply=ctx.fast_apply(network, vmapped=True) if compiled else None,
                             evaluate=evaluation(ctx, network, compiled, rows),
                             progress=ctx.settings.progress, desc=f"{first.name.split('-lr')[0]} x{len(specs)}",
                             checkpoint=population_checkpoint_path(ctx, specs), resume=ctx.settings.resume,
                             config={"members": [sp.identity(ctx.fingerprint) for sp in specs]})
    together = f"{len(specs)} runs together" if len(specs) > 1 else "alone"
    how = f"{POPULATION_TRAINER} ({together}{', compiled' if compiled else ''})"
    return [(r, how) for r in results]


# the group trainers that checkpoint their whole group in one file (population_checkpoint_path)
WHOLE_GROUP_CHECKPOINTS = (train_population, train_together)


def seeds_trainer(settings: Settings) -> Optional[GroupTrainer]:
    """How the runs of a configuration's seeds train: together, one population, when there
    are several; with one seed each run alone with ``fit``, as before seeds."""
    # --parallel data: each run is trained by every rank in turn, so one at a time
    return train_population if settings.seeds > 1 and settings.parallel != "data" else None


def store(ctx: Context, spec: RunSpec, result: FitResult, trainer: str) -> RunRecord:
    """Write the run's record to its result file and print its summary line."""
    n_params = sum(int(v.numel()) for v in result.params.values())
    record = RunRecord(spec, spec.config_hash(ctx.fingerprint), n_params, finite_logs(result.logs),
                       result.diverged, result.wall_time_s, trainer, result_path(ctx, spec))
    write_json(record.path, record.to_json())
    ctx.written.add(record.path)
    discard(checkpoint_path(ctx, spec))
    ctx.echo(summary(record))
    return record
