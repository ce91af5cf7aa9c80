"""What one search run is asked to do (`SearchSettings`), its input checks, and where results go.

The CLI only fills in a SearchSettings: a few top-level fields (budget, deployment, space, objective, --pareto)
and one small group per concern (Sampling, Measuring, Scoring, StudyStorage, Reporting), each checking its own
flags. Everything a worker must share with a study to join it is `SearchSettings.identity()`. Constructing the
settings reads no file: with `--objective accuracy` the data set is loaded on first use (`SearchSettings.dataset()`,
which the CLI calls first, so a bad one fails before anything is measured); its digest and the training fidelity
are part of the identity.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import bench
from bench.kit import results_root
from bench.runtimes import RUNTIMES

from search.scoring.accuracy import ACCURACY, PRUNERS
from search.scoring.data import USAGE as DATA_USAGE
from search.scoring.data import FASHION_MNIST, Dataset, load_data
from search.latency import DEFAULT_MARGIN, Deployment, default_stop
from search.scoring.proxies import PROXIES, list_proxies
from search.space import SearchInputError, SearchSpace
from search.scoring.training import TrainingSettings

# Under the one results root of bench and search (bench.kit.results_root: $CONTAINER_BENCH_RESULTS, else
# results/ of this checkout), whatever the working directory; resolved once, at import.
DEFAULT_RESULTS_DIR = results_root() / "search"
PREDICTOR_DIR = results_root() / "predictor"  # the predictor's table and calibration, one file per machine
# The predictor gate is on by default (results/search_vs_scaled/: larger networks that fit a tight budget for the same
# 30 measured candidates) except where its table cannot be built in minutes: aot compiles a package per part, 12-41 s
# each (results/runtimes-aot/), and the table has a few hundred.
NO_PREDICTOR_RUNTIMES = ("aot",)
VALIDATION_DIR = results_root() / "proxy_validation"
# The evidence decides (results/proxy_validation/, Fashion-MNIST, 40 architectures x 2 seeds, widths / 8): #params
# ranks trained accuracy with Spearman 0.82 [0.67, 0.89] (0.78 at widths / 4); naswot, the default before, 0.03.
DEFAULT_OBJECTIVE = "params"
SAMPLERS = ("tpe", "random")  # --sampler: Optuna's TPE (constrained), or uniform random search as its baseline
# --start: the study's first trials are the scaled Container-Light members that fit (search.scaled), or the sampler's
# own (random) start-up proposals. TPE starts from the family by default; random search stays uniform.
STARTS = ("scaled", "random")


def list_objectives() -> list[str]:
    """Every `--objective`: the training-free proxies and trained accuracy."""
    return sorted([*list_proxies(), ACCURACY])


class WorkerMismatchError(SearchInputError):
    """This worker's hardware or deployment setting differs from the study's: it must not join."""


class NoFeasibleNetworkError(RuntimeError):
    """No network in the space fits the budget on this device (the message gives the smallest latency)."""


def add_runtime_argument(group: Any) -> None:
    """`--runtime` (alias `--impl`) of every search command; checked by Deployment (through bench), so an
    unknown runtime lists the valid ones and a missing package is named, in one line."""
    group.add_argument("--runtime", "--impl", dest="runtime", default="fast", metavar="RUNTIME",
                       help=f"what the network is deployed on, and timed on: {', '.join(RUNTIMES)} "
                            f"(default: fast, i.e. container.optimize; reference is the seed-faithful eager code)")


def parse_budget(value: Any) -> float:
    """A latency budget in ms: a finite number > 0, or SearchInputError with a one-line reason."""
    text = str(value).strip()
    try:
        budget = float(text)
    except (TypeError, ValueError):
        raise SearchInputError(f"--budget-ms {text!r}: not a number (give milliseconds, e.g. --budget-ms 25)") from None
    if math.isnan(budget):
        raise SearchInputError(f"--budget-ms {text}: NaN is not a budget (give milliseconds > 0)")
    if math.isinf(budget):
        raise SearchInputError(f"--budget-ms {text}: must be finite")
    if budget <= 0:
        raise SearchInputError(f"--budget-ms {text}: must be > 0 ms")
    return budget


@dataclass
class Sampling:
    """How candidates are proposed: the sampler, how many trials, for how long, from which seed."""

    sampler: str = "tpe"
    n_trials: int | None = 30  # the study's target number of finished trials (a resume runs the rest)
    timeout_s: float | None = None
    seed: int | None = 0  # the sampler's, and the proxies' and the training's initialisation seed
    start: str | None = None  # None: "scaled" for TPE, "random" for random search

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SearchInputError(f"--sampler {self.sampler!r}: valid samplers: {', '.join(SAMPLERS)}")
        if self.start is not None and self.start not in STARTS:
            raise SearchInputError(f"--start {self.start!r}: valid starts: {', '.join(STARTS)}")
        if self.n_trials is not None and (isinstance(self.n_trials, bool) or self.n_trials < 1):
            raise SearchInputError(f"--trials {self.n_trials}: must be >= 1")
        if self.timeout_s is not None and not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise SearchInputError(f"--timeout {self.timeout_s}: must be a number of seconds > 0")

    @property
    def starts_from(self) -> str:
        """The study's first trials: `start` as given, else "scaled" for TPE and "random" for random search."""
        return self.start or ("scaled" if self.sampler == "tpe" else "random")


@dataclass
class Measuring:
    """How latency is measured: the stop rule, the machine lock, the predictor gate, the smallest-network check."""

    stop: bench.StopRule | None = None  # None: DEFAULT_STOP scaled to the budget (SearchSettings resolves it)
    lock_file: str | None = None
    # Reject candidates the latency predictor puts clearly over budget, unmeasured. None: where the predictor models
    # what is measured (`gates`).
    predictor: bool | None = None
    predictor_margin: float = DEFAULT_MARGIN  # ... i.e. predicted above budget * (1 + margin)
    predictor_dir: Path = PREDICTOR_DIR
    check_smallest: bool = True  # measure the smallest network first: nothing fits if it does not

    def gates(self, runtime: str, measured_here: bool) -> bool:
        """Whether the predictor gate screens candidates: as asked, else (None) wherever the predictor models what
        the search measures, i.e. this machine's own measurement (`measured_here`: no latency source passed in by
        the caller) on a runtime whose table builds in minutes."""
        if self.predictor is not None:
            return self.predictor
        return measured_here and runtime not in NO_PREDICTOR_RUNTIMES

    def __post_init__(self) -> None:
        self.predictor_dir = Path(self.predictor_dir)
        if not (isinstance(self.predictor_margin, (int, float)) and 0 <= self.predictor_margin < 10):
            raise SearchInputError(f"--predictor-margin {self.predictor_margin}: must be a fraction >= 0 (e.g. 0.1)")


@dataclass
class Scoring:
    """How a candidate is scored: the proxies' averaging, and with --objective accuracy the data (a --data SPEC,
    or a Dataset already loaded), the training fidelity and the pruner (None: hyperband, or none with --pareto,
    which Optuna cannot prune; SearchSettings resolves it). The data set is loaded on first use (`dataset()`)."""

    proxy_inits: int = 3
    proxy_batch: int = 8
    score_infeasible: bool = False  # also compute the (costly) proxy for over-budget trials
    data: str | Path | Dataset | None = None
    training: TrainingSettings = field(default_factory=TrainingSettings)
    pruner: str | None = None
    _dataset: Dataset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.proxy_inits < 1:
            raise SearchInputError(f"--proxy-inits {self.proxy_inits}: must be >= 1")
        if self.proxy_batch < 1:
            raise SearchInputError(f"--proxy-batch {self.proxy_batch}: must be >= 1")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise SearchInputError(f"--pruner {self.pruner!r}: valid pruners: {', '.join(PRUNERS)}")
        if not isinstance(self.training, TrainingSettings):
            raise SearchInputError(f"training: expected TrainingSettings, got {type(self.training).__name__}")

    def dataset(self) -> Dataset | None:
        """The data set (None without --data), loaded once, on first use. Raises SearchInputError naming --data."""
        if self._dataset is None and self.data is not None:
            self._dataset = self.data if isinstance(self.data, Dataset) else load_data(self.data)
        return self._dataset


FINALISTS = 2  # the top architectures by the objective that are trained (the best scaled member comes on top)
# The validation's fidelity (search.experiments.evidence.VALIDATION_TRAINING: seed-to-seed Spearman 0.87 there), but
# 5000 validation images, not 1000: with 1000 a finalist's accuracy is known to +-1.3 points (binomial standard error
# at 0.8), as much as the finalists differ by at a loose budget (results/search_vs_scaled/).
FINALIST_TRAINING = TrainingSettings(epochs=2, train_images=4000, val_images=5000, width_div=8)
FINALIST_SEEDS = 1  # training seeds per finalist, its accuracy their mean
# A finalist must beat the best scaled start's validation accuracy by more than this to win: one standard deviation of
# the difference between two finalists trained once each at FINALIST_TRAINING (2.33 points, measured over 45 finalists
# trained twice; results/search_vs_scaled/). It kept the search from losing to the scaled network at 30 ms on new seeds.
FINALIST_MARGIN = 0.0233


@dataclass
class Finalists:
    """How the winner is chosen: `count` top architectures by the objective (0: by the objective alone), trained on
    `data` at `training`. The default data, Fashion-MNIST, may be missing (a Debian package): then nothing is
    trained and the report says why; data given explicitly must load (SearchInputError naming --finalist-data)."""

    count: int = FINALISTS
    data: str | Path | Dataset | None = FASHION_MNIST
    seeds: int = FINALIST_SEEDS
    margin: float = FINALIST_MARGIN  # validation accuracy by which a finalist must beat the best scaled start
    training: TrainingSettings = field(default_factory=lambda: FINALIST_TRAINING)
    unavailable: str | None = field(default=None, init=False, repr=False, compare=False)
    _dataset: Dataset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise SearchInputError(f"--finalists {self.count!r}: must be an integer >= 0 (0: by the objective alone)")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise SearchInputError(f"--finalist-seeds {self.seeds!r}: must be an integer >= 1")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not 0 <= self.margin < 1:
            raise SearchInputError(f"--finalist-margin {self.margin!r}: must be an accuracy difference in [0, 1)")

    def dataset(self) -> Dataset | None:
        if self._dataset is None and self.data is not None and self.unavailable is None:
            if isinstance(self.data, Dataset):
                self._dataset = self.data
            else:
                try:
                    self._dataset = load_data(self.data)
                except SearchInputError as e:
                    if str(self.data) != FASHION_MNIST:
                        raise SearchInputError(str(e).replace("--data", "--finalist-data", 1)) from None
                    self.unavailable = str(e)
        return self._dataset

    def identity(self, seed: int, replicate: int = 0) -> str:
        """What decides one finalist training's accuracy (data, fidelity, the search's seed and which of its training
        seeds): an accuracy stored under another identity is not reused. The first training seed's identity is the one
        studies made before there were several."""
        data = self.dataset()
        fields = {"data": data.digest if data else None, "training": self.training.identity(), "seed": seed}
        return json.dumps(fields | ({"replicate": replicate} if replicate else {}), sort_keys=True)


@dataclass
class StudyStorage:
    """Where the study lives: its name (None: derived from the setting), the storage URL (None: a journal file in
    the study directory) and the results directory. The URL may carry a password: it is left out of the repr."""

    study_name: str | None = None
    url: str | None = field(default=None, repr=False)  # any Optuna storage URL (printed through storage.redacted)
    results_dir: Path = DEFAULT_RESULTS_DIR

    def __post_init__(self) -> None:
        self.results_dir = Path(self.results_dir)
        if self.study_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study_name):
            raise SearchInputError(f"--study {self.study_name!r}: use letters, digits, '.', '_' and '-' only")


@dataclass
class Reporting:
    """After the trials: which architectures are re-measured, with what headroom; and the progress display."""

    recheck: int | None = None  # re-measure the top N feasible architectures (None: all of them)
    recheck_margin: float = 0.05  # a re-measured median must fit budget * (1 - margin) to stay
    progress: bool = True

    def __post_init__(self) -> None:
        if self.recheck is not None and self.recheck < 0:
            raise SearchInputError(f"--recheck {self.recheck}: must be >= 0")
        if not (isinstance(self.recheck_margin, (int, float)) and 0 <= self.recheck_margin < 1):
            raise SearchInputError(f"--recheck-margin {self.recheck_margin}: must be a fraction in [0, 1)")


@dataclass
class SearchSettings:
    """Everything one search run is asked to do. The CLI only fills this in. Constructing it checks every
    setting and reads no file: the data set of --objective accuracy is loaded on first use (`dataset()`)."""

    budget_ms: float
    deployment: Deployment = field(default_factory=Deployment)
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: str = DEFAULT_OBJECTIVE
    pareto: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    measuring: Measuring = field(default_factory=Measuring)
    scoring: Scoring = field(default_factory=Scoring)
    storage: StudyStorage = field(default_factory=StudyStorage)
    report: Reporting = field(default_factory=Reporting)
    finalists: Finalists = field(default_factory=Finalists)

    def __post_init__(self) -> None:
        self.budget_ms = parse_budget(self.budget_ms)
        if self.measuring.stop is None:  # a new group: the caller's is left as given
            self.measuring = replace(self.measuring, stop=default_stop(self.budget_ms))
        if self.objective not in PROXIES and self.objective != ACCURACY:
            raise SearchInputError(f"--objective {self.objective!r}: valid objectives: {', '.join(list_objectives())}")
        self._check_training()
        self.space.validate(self.deployment.image_size)

    def _check_training(self) -> None:
        scoring = self.scoring
        if self.objective != ACCURACY:
            if scoring.data is not None:
                raise SearchInputError(f"--data: used only with --objective accuracy (this run's objective is "
                                       f"{self.objective})")
            return
        if self.pareto and scoring.pruner not in (None, "none"):
            raise SearchInputError(f"--pruner {scoring.pruner}: Optuna cannot prune a two-objective (--pareto) "
                                   f"study; use --pruner none")
        if scoring.data is None:
            raise SearchInputError(f"--objective accuracy: needs --data ({DATA_USAGE})")
        if scoring.pruner is None:  # resolved in a new group (the caller's is left as given), data kept if loaded
            self.scoring = replace(scoring, pruner="none" if self.pareto else "hyperband")
            self.scoring._dataset = scoring._dataset

    def dataset(self) -> Dataset | None:
        """The data set of --objective accuracy (None with any other objective), loaded once, on first use: the
        CLI asks for it first, so a bad --data fails before anything is measured. Raises SearchInputError."""
        return self.scoring.dataset() if self.objective == ACCURACY else None

    @property
    def objective_identity(self) -> str:
        """The objective as a worker must share it: for accuracy, the data (by digest) and the fidelity too."""
        dataset = self.dataset()
        if dataset is None:
            return self.objective
        return (f"accuracy on {dataset.describe()} (digest {dataset.digest}); "
                f"{self.scoring.training.describe()}; seed {self.sampling.seed or 0}; pruner {self.scoring.pruner}")

    @property
    def name(self) -> str:
        """The study name: given, or derived from the setting (the same command resumes the same study)."""
        if self.storage.study_name:
            return self.storage.study_name
        d = self.deployment
        sampler = self.sampling.sampler
        return (f"{d.device.replace(':', '')}-{d.runtime}-b{d.batch_size}-{d.image_size}px-{d.dtype}-t{d.threads}-"
                f"{self.budget_ms:g}ms-{self.objective}{self._data_suffix()}{'-pareto' if self.pareto else ''}"
                f"{'' if sampler == 'tpe' else '-' + sampler}")

    def _data_suffix(self) -> str:
        dataset = self.dataset()
        if dataset is None:
            return ""
        return "-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name).strip("._-") or "data")

    @property
    def recheck_limit_ms(self) -> float:
        """What a re-measured median must not exceed for an architecture to stay in the ranking."""
        return self.budget_ms * (1 - self.report.recheck_margin)

    @property
    def predictor_threshold_ms(self) -> float:
        """With --predictor: a candidate predicted above this is rejected unmeasured."""
        return self.budget_ms * (1 + self.measuring.predictor_margin)

    @property
    def study_dir(self) -> Path:
        return self.storage.results_dir / self.name

    def identity(self) -> dict[str, Any]:
        """What a worker must share with a study to join it (recorded in the study's user attrs). The
        deployment includes the runtime: latencies from different runtimes never mix in one study."""
        return {"fingerprint": self.deployment.fingerprint(), "deployment": self.deployment.to_dict(),
                "budget_ms": self.budget_ms, "objective": self.objective_identity, "pareto": self.pareto,
                "space": self.space.to_dict(), "sampler": self.sampling.sampler}


__all__ = ["DEFAULT_OBJECTIVE", "DEFAULT_RESULTS_DIR", "FINALISTS", "FINALIST_MARGIN", "FINALIST_SEEDS",
           "FINALIST_TRAINING", "Finalists", "Measuring", "NoFeasibleNetworkError", "PREDICTOR_DIR", "Reporting",
           "SAMPLERS", "STARTS", "Sampling", "Scoring", "SearchSettings", "StudyStorage", "VALIDATION_DIR",
           "WorkerMismatchError", "add_runtime_argument", "list_objectives", "parse_budget"]
