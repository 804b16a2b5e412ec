"""What every experiment of a command shares: the command line's settings and the data,
loaded once and normalised on demand."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Set, Tuple

import torch

from ...core.checks import shown
from ...core.config import HOMEWORK_SEED
from ...core.data import Split, Splits, load_fashion_mnist, normalize
from ...core.networks import Network, Params
from ...core.paths import ensure_writable_dir, safe_path
from ...core.trees import tensors_digest
from ...speed import inductor_apply
from ...speed.calibration import DEFAULTS, Calibration, calibrated_cpus, cpu_key, load_calibration
from .. import PROG
from ..report import print_warning

FINGERPRINT_DIGITS = 16  # hex digits of the fingerprint kept
CALIBRATION_FILE = "calibration.json"  # in the output folder: this CPU's measured choices
SHOWN_CPUS = 3  # the other CPUs a warning names


@dataclass
class Settings:
    """What the command line gives every experiment; the command line's defaults are these."""

    data: Path = Path("data")
    out: Path = Path("results")
    epochs: int = 50
    seed: int = HOMEWORK_SEED
    # Runs per configuration (seeds seed, seed + 1, ...). Two already give a spread and an
    # interval, but Welch's degrees of freedom can then fall to 1 (t = 12.7: an interval too
    # wide to tell anything); with 3 they stay >= 2 (t <= 4.3).
    seeds: int = 3
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
    command: str = PROG
    parallel: Optional[str] = None  # --parallel: "data" under torchrun, or None for one process
    rank_timeout: float = 300.0  # seconds a rank waits for the others within a training step
    rank: int = 0  # this process's rank in a torchrun launch (0: the one that prints and writes)

    @property
    def run_seeds(self) -> Tuple[int, ...]:
        """The seeds of a configuration's runs: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return tuple(range(self.seed, self.seed + self.seeds))


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
        self._calibration: Optional[Calibration] = None
        # Result files this command wrote: --force retrains what earlier commands stored, not
        # a run that two experiments share (question 3's MLP is question 4's and the sweep's).
        self.written: Set[Path] = set()

    @property
    def out(self) -> Path:
        return Path(self.settings.out)

    @property
    def calibration_path(self) -> Path:
        return safe_path(self.out, CALIBRATION_FILE)

    @property
    def calibration(self) -> Calibration:
        """This CPU's calibration from the output folder (``fn-trainer calibrate``), else
        ``DEFAULTS``: when a run compiles its step, and the Winograd threshold."""
        if self._calibration is None:
            self._calibration = load_calibration(self.calibration_path) or DEFAULTS
            others = calibrated_cpus(self.calibration_path) if self._calibration is DEFAULTS else []
            if self._calibration is not DEFAULTS and not self._calibration.eval_ms:  # an earlier version's
                self.warn(f"{self.calibration_path} holds an earlier fn-trainer's calibration for {cpu_key()!r}, "
                          f"without the evaluation's measurements: those of the defaults apply; {PROG} calibrate --out "
                          f"{self.out} --threads {torch.get_num_threads()} measures them")
            if others:  # e.g. measured with another thread count: said, not silently ignored
                listed = ", ".join(map(shown, others[:SHOWN_CPUS]))
                if len(others) > SHOWN_CPUS:  # a line, however many a hand-made file holds
                    listed += f" and {len(others) - SHOWN_CPUS} more"
                self.warn(f"{self.calibration_path} holds no calibration for {cpu_key()!r}, only for "
                          f"{listed}: the defaults apply; {PROG} calibrate --out {self.out} --threads "
                          f"{torch.get_num_threads()} measures this one")  # the key holds the thread count
        return self._calibration

    @calibration.setter
    def calibration(self, calibration: Calibration) -> None:
        self._calibration = calibration

    def fast_apply(self, network: Network, *, vmapped: bool = False) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        """The forward of ``network`` that a compiled step uses, with this CPU's Winograd threshold."""
        return inductor_apply(network, vmapped=vmapped,
                              winograd_min_channels=self.calibration.winograd_min_channels)

    def folder(self, name: str, *, create: bool = True, link: bool = False) -> Path:
        """``<out>/<name>``, created; ``create=False`` checks that it can be created and
        written, creating nothing. A symbolic link there is refused unless ``link``: the
        report leaves out a section read through a link (``runs/``, whose files are read
        whatever folder holds them, may be a link to another disk)."""
        path = safe_path(self.out, name)
        if not link and path.is_symlink():
            raise ValueError(f"{str(path)!r} is a symbolic link, where fn-trainer writes an experiment's figures "
                             "and report section: report.md would leave them out; remove the link")
        if not create:
            return ensure_writable_dir(path, create=False)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            ensure_writable_dir(path)  # raises, naming why (a file in the way, a link to nothing...)
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
        """A short hash of the data (the training and validation images and labels, and
        their shapes): results from other data never count as done. Hashing all of
        Fashion-MNIST's training data takes a fraction of a second."""
        if self._fingerprint is None:
            s = self.splits
            self._fingerprint = tensors_digest([s.train.X, s.train.y, s.valid.X, s.valid.y], FINGERPRINT_DIGITS)
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
