"""A configuration's runs over seeds: the runs that differ only in their seed, and their
mean curve, its band and the spread of their final and best accuracies."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..statistics import Spread, spread
from .records import RunRecord, RunSpec

Values = List[Optional[float]]


@dataclass(frozen=True)
class Configuration:
    """The runs of one configuration, one per seed (at least one).

    Curves are taken epoch by epoch over every run: where any run has no finite value
    (it diverged before that epoch) the configuration has none either, so a mean never
    silently drops a diverged run.
    """

    runs: Tuple[RunRecord, ...]

    def __post_init__(self):
        if not self.runs:
            raise ValueError("a configuration needs at least one run")
        keys = {_without_seed(r.spec) for r in self.runs}
        if len(keys) != 1:
            raise ValueError(f"the runs of a configuration must differ only in their seed, got "
                             f"{[r.spec.name for r in self.runs]}")

    @property
    def spec(self) -> RunSpec:
        """The first run's spec (every field but the seed and name is the configuration's)."""
        return self.runs[0].spec

    @property
    def n_params(self) -> int:
        return self.runs[0].n_params

    @property
    def seeds(self) -> List[int]:
        return [r.spec.seed for r in self.runs]

    @property
    def n_diverged(self) -> int:
        """How many of the runs diverged."""
        return sum(1 for r in self.runs if r.diverged)

    @property
    def diverged(self) -> Optional[str]:
        """``None``, the one run's reason, or ``"<k> of <K> seeds diverged"``."""
        reasons = [r.diverged for r in self.runs if r.diverged]
        if not reasons:
            return None
        return reasons[0] if len(self.runs) == 1 else f"{len(reasons)} of {len(self.runs)} seeds diverged"

    @property
    def diverged_note(self) -> Optional[str]:
        """``None``, ``"diverged"`` for one run, or ``"<k> of <K> seeds diverged"``: short, for legends and cells."""
        return None if not self.n_diverged else "diverged" if len(self.runs) == 1 else self.diverged

    def mean_curve(self, key: str) -> Values:
        """``logs[key]`` averaged over the runs, epoch by epoch (``None`` where a run has no value)."""
        return [None if None in column else math.fsum(column) / len(column) for column in self._columns(key)]

    def band(self, key: str) -> Optional[Tuple[Values, Values]]:
        """``(min, max)`` of ``logs[key]`` over the runs, epoch by epoch; ``None`` for one run."""
        if len(self.runs) == 1:
            return None
        columns = self._columns(key)
        return ([None if None in c else min(c) for c in columns], [None if None in c else max(c) for c in columns])

    def finals(self, key: str = "validation_accuracy") -> List[float]:
        """Each run's last value of ``logs[key]``, where it is finite."""
        return [v for v in (r.final(key) for r in self.runs) if v is not None]

    def bests(self, key: str = "validation_accuracy") -> List[float]:
        """Each run's highest finite value of ``logs[key]``, where it has one."""
        return [v for v in (r.best(key)[0] for r in self.runs) if v is not None]

    def final_spread(self, key: str = "validation_accuracy") -> Optional[Spread]:
        """Mean and std over seeds of the final values (``None`` if no run has one)."""
        values = self.finals(key)
        return spread(values) if values else None

    def best_spread(self, key: str = "validation_accuracy") -> Optional[Spread]:
        """Mean and std over seeds of the best values (``None`` if no run has one)."""
        values = self.bests(key)
        return spread(values) if values else None

    def _columns(self, key: str) -> List[Values]:
        """``columns[i]``: every run's ``logs[key][i]`` (``None`` past a run's end), up to the longest run."""
        curves = [r.curve(key) for r in self.runs]
        length = max(len(c) for c in curves)
        return [[c[i] if i < len(c) else None for c in curves] for i in range(length)]


def _without_seed(spec: RunSpec) -> RunSpec:
    # The name holds the seed too; the label and the rest are the configuration's.
    return dataclasses.replace(spec, name="", seed=0)


def by_configuration(records: Sequence[RunRecord]) -> List[Configuration]:
    """``records`` grouped into configurations (runs differing only in their seed), in the
    order of each configuration's first run; within one, in the records' order."""
    groups: Dict[RunSpec, List[RunRecord]] = {}
    for r in records:
        groups.setdefault(_without_seed(r.spec), []).append(r)
    return [Configuration(tuple(runs)) for runs in groups.values()]
