"""The search: an Optuna study over the space, latency as a constraint, a proxy score as objective.

Seams: the study lives in an Optuna storage (a journal file in the study directory by default, any
Optuna storage URL otherwise); the sampler is TPE, constrained through `trial.set_constraint`
(Optuna 5's core constraint API, which TPE and `study.best_trials` read); latencies come from a
`LatencySource` (bench by default, wrapped in a persistent cache); scores come from a `Scorer`
(a training-free proxy by default).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
import psutil
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

import bench
from container import NetworkConfig

from search.latency import (BenchLatency, CachedLatency, Deployment, Latency, LatencySource, MachineLock,
                            MeasurementError, config_key, default_stop)
from search.proxies import PROXIES, ProxyScorer, Scorer, Scores, list_proxies
from search.space import SearchInputError, SearchSpace

if not hasattr(optuna.trial.Trial, "set_constraint"):  # pragma: no cover - depends on the installed Optuna
    raise ImportError(f"search needs optuna>=5.0 (trial.set_constraint); this is optuna {optuna.__version__}")

SEARCH_FORMAT = 1
DEFAULT_RESULTS_DIR = Path("results/search")
DEFAULT_OBJECTIVE = "naswot"
CONSTRAINT = "latency_ms"  # latency median - budget; feasible when <= 0


class WorkerMismatchError(SearchInputError):
    """This worker's hardware or deployment setting differs from the study's: it must not join."""


class NoFeasibleNetworkError(RuntimeError):
    """No network in the space fits the budget on this device (the message gives the smallest latency)."""


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
class SearchSettings:
    """Everything one search run is asked to do. The CLI only fills this in."""

    budget_ms: float
    deployment: Deployment = field(default_factory=Deployment)
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: str = DEFAULT_OBJECTIVE
    pareto: bool = False
    n_trials: int | None = 30  # the study's target number of finished trials (a resume runs the rest)
    timeout_s: float | None = None
    seed: int | None = 0
    study_name: str | None = None
    storage: str | None = None  # any Optuna storage URL; default: a journal file in the study directory
    results_dir: Path = DEFAULT_RESULTS_DIR
    stop: bench.StopRule | None = None  # None: DEFAULT_STOP scaled to the budget (search.latency.default_stop)
    proxy_inits: int = 3
    proxy_batch: int = 8
    recheck: int | None = None  # re-measure the top N feasible architectures (None: all of them)
    recheck_margin: float = 0.05  # a re-measured median must fit budget * (1 - margin) to stay
    score_infeasible: bool = False  # also compute the (costly) proxy for over-budget trials
    check_smallest: bool = True
    progress: bool = True
    lock_file: str | None = None
    predictor: bool = False  # reject candidates the latency predictor puts clearly over budget, unmeasured
    predictor_margin: float = 0.10  # ... i.e. predicted above budget * (1 + margin)
    predictor_dir: Path | None = None  # None: search.predictor.PREDICTOR_DIR (results/predictor)

    def __post_init__(self) -> None:
        self.budget_ms = parse_budget(self.budget_ms)
        if self.stop is None:
            self.stop = default_stop(self.budget_ms)
        self.results_dir = Path(self.results_dir)
        if self.objective not in PROXIES:
            raise SearchInputError(f"--objective {self.objective!r}: valid objectives: {', '.join(list_proxies())}")
        if self.n_trials is not None and (isinstance(self.n_trials, bool) or self.n_trials < 1):
            raise SearchInputError(f"--trials {self.n_trials}: must be >= 1")
        if self.timeout_s is not None and not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise SearchInputError(f"--timeout {self.timeout_s}: must be a number of seconds > 0")
        if self.proxy_inits < 1:
            raise SearchInputError(f"--proxy-inits {self.proxy_inits}: must be >= 1")
        if self.proxy_batch < 1:
            raise SearchInputError(f"--proxy-batch {self.proxy_batch}: must be >= 1")
        if self.recheck is not None and self.recheck < 0:
            raise SearchInputError(f"--recheck {self.recheck}: must be >= 0")
        if not (isinstance(self.recheck_margin, (int, float)) and 0 <= self.recheck_margin < 1):
            raise SearchInputError(f"--recheck-margin {self.recheck_margin}: must be a fraction in [0, 1)")
        if not (isinstance(self.predictor_margin, (int, float)) and 0 <= self.predictor_margin < 10):
            raise SearchInputError(f"--predictor-margin {self.predictor_margin}: must be a fraction >= 0 (e.g. 0.1)")
        if self.study_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.study_name):
            raise SearchInputError(f"--study {self.study_name!r}: use letters, digits, '.', '_' and '-' only")
        self.space.validate(self.deployment.image_size)

    @property
    def name(self) -> str:
        """The study name: given, or derived from the setting (the same command resumes the same study)."""
        if self.study_name:
            return self.study_name
        d = self.deployment
        return (f"{d.device.replace(':', '')}-b{d.batch_size}-{d.image_size}px-{d.dtype}-t{d.threads}-"
                f"{self.budget_ms:g}ms-{self.objective}{'-pareto' if self.pareto else ''}")

    @property
    def recheck_limit_ms(self) -> float:
        """What a re-measured median must not exceed for an architecture to stay in the ranking."""
        return self.budget_ms * (1 - self.recheck_margin)

    @property
    def study_dir(self) -> Path:
        return self.results_dir / self.name

    def identity(self) -> dict[str, Any]:
        """What a worker must share with a study to join it (recorded in the study's user attrs)."""
        return {"fingerprint": self.deployment.fingerprint(), "deployment": self.deployment.to_dict(),
                "budget_ms": self.budget_ms, "objective": self.objective, "pareto": self.pareto,
                "space": self.space.to_dict()}


@dataclass
class SearchResult:
    study_name: str
    study_dir: Path
    budget_ms: float
    trials: pd.DataFrame  # every trial, one row each (see trials_frame)
    ranking: pd.DataFrame  # the feasible, re-checked survivors, best first
    best_config: dict[str, Any] | None
    interrupted: bool = False
    elapsed_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)
    smallest_latency_ms: float | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    predictor_rejected: int = 0  # candidates rejected by the latency predictor in this run, unmeasured

    @property
    def feasible(self) -> bool:
        return not self.ranking.empty


# --- storage ------------------------------------------------------------------------------------


def make_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """The default is a journal file in the study directory (no server, survives a kill); a URL
    (sqlite:///..., postgresql://...) gives an RDB storage with heartbeats, so a dead worker's
    trial is failed and retried."""
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    if url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = url.removeprefix("journal:").removeprefix("//")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except Exception as e:  # a bad URL, a missing driver, an unreachable server
            text = str(e)
            if attempt < 5 and any(m in text for m in _CREATION_RACE):
                # Workers started together on an empty database race to create Optuna's tables (PostgreSQL:
                # a duplicate pg_type row); the loser finds them created on the next try.
                time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
                continue
            raise SearchInputError(f"--storage {url!r}: {text.splitlines()[0] if text else type(e).__name__}") from None
    raise AssertionError("unreachable")


_CREATION_RACE = ("duplicate key value", "already exists", "UniqueViolation", "Duplicate entry", "IntegrityError",
                  "database is locked")


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _counts_toward_target(trial: FrozenTrial) -> bool:
    """Finished trials count; trials lost to a kill or Ctrl-C do not (they are retried)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not (trial.user_attrs.get("interrupted") or trial.user_attrs.get("lost"))


def feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and all(v <= 0 for v in trial.constraints.values()) \
        and bool(trial.constraints)


class SearchStudy:
    """One worker's view of a study: open (or create) it, run trials, re-check, summarise."""

    def __init__(self, settings: SearchSettings, *, latency_source: LatencySource | None = None,
                 scorer: Scorer | None = None):
        self.settings = s = settings
        self.lock = MachineLock(s.lock_file)
        source = latency_source if latency_source is not None else BenchLatency(s.deployment, s.stop, self.lock)
        self.identity = s.identity()
        context = {"fingerprint": self.identity["fingerprint"], "deployment": self.identity["deployment"]}
        self.cache = CachedLatency(source, s.study_dir / "latency_cache.json", context, lock=self.lock)
        self.gate = None
        if s.predictor:
            # The predictor screens a candidate before the cache and the real measurement; what it lets
            # through, and every re-check, is measured for real. Same lock object: it is re-entrant.
            from search.predictor import PREDICTOR_DIR, LatencyPredictor, PredictorGate

            predictor = LatencyPredictor(s.deployment, lock=self.lock, directory=s.predictor_dir or PREDICTOR_DIR)
            self.gate = PredictorGate(predictor, self.cache, s.budget_ms, s.predictor_margin)
        self.scorer = scorer if scorer is not None else ProxyScorer(
            s.objective, inits=s.proxy_inits, batch_size=s.proxy_batch, device=s.deployment.device,
            seed=s.seed or 0, threads=s.deployment.threads)
        self.storage: optuna.storages.BaseStorage | None = None
        self.study: optuna.Study | None = None
        self.created = False
        self.smallest_latency: Latency | None = None

    # --- opening and joining ----------------------------------------------------------------------

    def open(self) -> optuna.Study:
        s = self.settings
        existed = s.study_dir.exists()
        self.storage = make_storage(s.storage, s.study_dir)
        names = {summary.study_name for summary in optuna.get_all_study_summaries(self.storage)}
        self.created = s.name not in names
        self._created_dir = not existed
        directions = ["maximize", "minimize"] if s.pareto else ["maximize"]
        seed = s.seed
        if not self.created and seed is not None:
            # A resumed run must not replay the random start-up proposals already tried.
            seed += len(self.storage.get_all_trials(self.storage.get_study_id_from_name(s.name), deepcopy=False))
        sampler = optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(study_name=s.name, storage=self.storage, sampler=sampler,
                                         directions=directions, load_if_exists=True)
        self._join()
        ordinal = self._worker_ordinal()
        if ordinal and seed is not None:
            # Workers started together by the same command would otherwise all propose the same
            # start-up trials: each later worker of the study gets its own (still reproducible) seed.
            self.study.sampler = optuna.samplers.TPESampler(seed=seed + 100_003 * ordinal)
        self._recover_lost_trials()
        return self.study

    def _join(self) -> None:
        """Record this worker's identity in a new study, or refuse to join one measured elsewhere."""
        study, mine = self.study, self.identity
        attrs = study.user_attrs
        if "fingerprint" not in attrs:
            study.set_user_attr("search_format", SEARCH_FORMAT)
            study.set_user_attr("environment", bench.environment(self.settings.deployment.device,
                                                                 self.settings.deployment.threads))
            study.set_user_attr("created_utc", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
            # One attribute at a time: the fingerprint goes last, so a worker that sees it sees the
            # whole identity (otherwise a second worker starting at once reads a half-written one).
            for key, value in sorted(mine.items(), key=lambda item: item[0] == "fingerprint"):
                study.set_user_attr(key, value)
            attrs = study.user_attrs  # re-read: another worker may have recorded its identity first
        check_identity(study.study_name, attrs, mine)

    def _worker_ordinal(self) -> int:
        """How many workers joined this study before this one (0 for the first), from one user attr
        per worker; two workers joining at once both see both attrs and order them the same way."""
        me = f"worker:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.study.set_user_attr(me, time.time_ns())
        joined = sorted((v, k) for k, v in self.study.user_attrs.items() if k.startswith("worker:"))
        return [k for _, k in joined].index(me)

    def _recover_lost_trials(self) -> None:
        """Fail this host's trials whose worker died (SIGKILL, power loss) and queue their params again,
        so a resumed study loses no proposal. Trials of live workers, or of other hosts, are left alone
        (an RDB storage's heartbeat handles those)."""
        study, storage = self.study, self.storage
        host = socket.gethostname()
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            worker = t.user_attrs.get("worker") or {}
            if t.state == TrialState.RUNNING and worker.get("host") == host and not psutil.pid_exists(worker.get("pid", -1)):
                storage.set_trial_user_attr(t._trial_id, "lost", True)
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                lost = True
            else:
                lost = t.state == TrialState.FAIL and bool(t.user_attrs.get("interrupted"))
            if lost and t.number not in retried and t.params:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                retried.add(t.number)

    def discard_if_new(self) -> None:
        """Remove a study this run created and that holds no finished trial (nothing to pass off as a result)."""
        if not self.created or self.study is None:
            return
        if any(_counts_toward_target(t) for t in self.study.get_trials(deepcopy=False)):
            return
        try:
            optuna.delete_study(study_name=self.study.study_name, storage=self.storage)
        except Exception:
            pass
        if self._created_dir and self.settings.storage is None:
            shutil.rmtree(self.settings.study_dir, ignore_errors=True)

    # --- the objective --------------------------------------------------------------------------------

    def check_smallest(self) -> Latency:
        """Measure the smallest network of the space first: a budget below it cannot be met."""
        s = self.settings
        config = s.space.smallest(s.deployment.image_size)
        latency = self.cache.measure(config)
        self.smallest_latency = latency
        if latency.median_ms > s.budget_ms:
            raise NoFeasibleNetworkError(
                f"--budget-ms {s.budget_ms:g}: below the smallest network in the space, which measures "
                f"{latency.median_ms:.2f} ms (median; p90 {latency.p90_ms:.2f} ms) at batch {s.deployment.batch_size}, "
                f"{s.deployment.image_size}px on {s.deployment.device}; raise the budget or shrink the space")
        return latency

    def prepare_predictor(self) -> None:
        """Calibrate the predictor for this setting if it is not yet (cached per machine under results/)."""
        if self.gate is not None:
            self.gate.predictor.ensure_calibrated(self.settings.space)

    def screen(self, trial: optuna.Trial, config: NetworkConfig) -> Latency | None:
        """With --predictor: the predicted latency when the candidate is clearly over budget (it is then not
        measured), else None. A config already measured (in the cache) is never screened."""
        if self.gate is None or self.cache.lookup(config) is not None:
            return None
        predicted = self.gate.predictor.predict(config)
        trial.set_user_attr("latency_predicted_ms", predicted)
        if predicted > self.gate.threshold_ms:
            self.gate.rejected += 1
            return Latency(median_ms=predicted, p90_ms=predicted, iqr_ms=0.0, runs=0, noisy=False, source="predicted")
        return None

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        s = self.settings
        trial.set_user_attr("worker", _worker())
        try:
            config = s.space.suggest(trial, s.deployment.image_size)
            trial.set_user_attr("config", config.to_dict())
            trial.set_user_attr("config_key", config_key(config, self.cache.context))
            latency = self.screen(trial, config)
            cached = False
            if latency is None:
                latency, cached = self.cache.measure_cached(config)
            trial.set_constraint(CONSTRAINT, latency.median_ms - s.budget_ms)
            for k, v in (("latency_median_ms", latency.median_ms), ("latency_p90_ms", latency.p90_ms),
                         ("latency_iqr_ms", latency.iqr_ms), ("latency_noisy", latency.noisy),
                         ("latency_cached", cached), ("latency_source", latency.source)):
                trial.set_user_attr(k, v)
            fits = latency.median_ms <= s.budget_ms
            scores = self.scorer.evaluate(config) if (fits or s.score_infeasible) else _size_only(self.scorer, config)
            trial.set_user_attr("params", int(scores.params))
            trial.set_user_attr("flops", int(scores.flops))
            scored = not math.isnan(scores.score)  # NaN: not scored (over budget); -inf: scored, degenerate
            trial.set_user_attr("scored", scored)
            trial.set_user_attr("score_spread", scores.spread if math.isfinite(scores.spread) else None)
            score = scores.score if scored else -math.inf
            trial.set_user_attr("score", score if math.isfinite(score) else None)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except (MeasurementError, RuntimeError) as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            raise
        return (score, latency.median_ms) if s.pareto else score

    # --- running --------------------------------------------------------------------------------------

    def counted_trials(self) -> int:
        return sum(_counts_toward_target(t) for t in self.study.get_trials(deepcopy=False))

    def optimize(self, callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        s = self.settings
        remaining = None if s.n_trials is None else max(0, s.n_trials - self.counted_trials())
        if remaining == 0:
            return
        target = s.n_trials

        def stop_at_target(study: optuna.Study, trial: FrozenTrial) -> None:
            # Other workers add trials too: stop when the study as a whole reaches its target.
            if target is not None and self.counted_trials() >= target:
                study.stop()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.optimize(self.objective, n_trials=remaining, timeout=s.timeout_s,
                                callbacks=[*callbacks, stop_at_target], catch=(MeasurementError, RuntimeError),
                                gc_after_trial=False)

    # --- re-checking ------------------------------------------------------------------------------------

    def rechecks(self) -> dict[str, dict[str, Any]]:
        return {k.removeprefix("recheck:"): v for k, v in self.study.user_attrs.items() if k.startswith("recheck:")}

    def recheck(self, on_progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, Any]]:
        """Measure the top feasible architectures again; any that no longer fit are marked and dropped."""
        s = self.settings
        done = self.rechecks()
        candidates: list[FrozenTrial] = []
        seen: set[str] = set()
        for t in sorted((t for t in self.study.get_trials(deepcopy=False) if feasible(t) and "config" in t.user_attrs),
                        key=_rank_key):
            key = t.user_attrs.get("config_key")
            if key in seen:
                continue
            seen.add(key)
            candidates.append(t)
        if s.recheck is not None:
            candidates = candidates[:s.recheck]
        todo = [t for t in candidates if t.user_attrs["config_key"] not in done]
        for i, t in enumerate(todo):
            if on_progress:
                on_progress(i, len(todo))
            config = NetworkConfig.from_dict(t.user_attrs["config"])
            try:
                latency = self.cache.remeasure(config)
                entry = {"median_ms": latency.median_ms, "p90_ms": latency.p90_ms, "iqr_ms": latency.iqr_ms,
                         "fits": latency.median_ms <= s.recheck_limit_ms, "trial": t.number}
            except MeasurementError as e:
                entry = {"median_ms": None, "p90_ms": None, "iqr_ms": None, "fits": False, "trial": t.number,
                         "error": str(e)}
            key = t.user_attrs["config_key"]
            self.study.set_user_attr(f"recheck:{key}", entry)
            done[key] = entry
        if on_progress:
            on_progress(len(todo), len(todo))
        return done

    # --- summarising -----------------------------------------------------------------------------------

    def trials_frame(self) -> pd.DataFrame:
        return trials_frame(self.study, self.settings.recheck_limit_ms, self.rechecks())


def check_identity(study_name: str, theirs: dict[str, Any], mine: dict[str, Any]) -> None:
    """Raise WorkerMismatchError unless this worker measures on the study's hardware and setting."""
    if theirs.get("fingerprint") != mine["fingerprint"]:
        env = theirs.get("environment") or {}
        where = f" ({env.get('cpu_model', '?')}{', ' + env['gpu_name'] if env.get('gpu_name') else ''})" if env else ""
        raise WorkerMismatchError(
            f"refusing to join study {study_name!r}: it was measured on hardware fingerprint "
            f"{theirs.get('fingerprint')}{where}, this worker is {mine['fingerprint']} "
            f"({bench.environment()['cpu_model']}, device {mine['deployment']['device']}, "
            f"threads {mine['deployment']['threads']}); latencies from different machines must not mix "
            f"(use a new --study)")
    theirs_dep, mine_dep = theirs.get("deployment") or {}, mine["deployment"]
    diffs = [f"--{k.replace('_', '-')} {theirs_dep.get(k)} (study) vs {mine_dep[k]} (this worker)"
             for k in mine_dep if theirs_dep.get(k) != mine_dep[k]]
    if diffs:
        raise WorkerMismatchError(f"refusing to join study {study_name!r}: deployment setting differs: "
                                  f"{'; '.join(diffs)} (use the study's setting or a new --study)")
    for key, flag in (("budget_ms", "--budget-ms"), ("objective", "--objective"), ("pareto", "--pareto")):
        if theirs.get(key) != mine[key]:
            raise WorkerMismatchError(f"refusing to join study {study_name!r}: it was created with {flag} "
                                      f"{theirs.get(key)}, this run asks for {mine[key]} (use a new --study)")
    if theirs.get("space") != mine["space"]:
        raise WorkerMismatchError(f"refusing to join study {study_name!r}: its search space differs from this "
                                  f"run's (--space / --space-set); use the same space or a new --study")


def _size_only(scorer: Scorer, config: NetworkConfig) -> Scores:
    """#params and FLOPs without the (costly) score, for an over-budget trial."""
    size = getattr(scorer, "size", None)
    if size is not None:
        params, flops = size(config)
        return Scores(math.nan, params, flops)
    from search.proxies import count_flops, count_params
    import container
    model = container.build(config)
    return Scores(math.nan, count_params(model), count_flops(model, config))


def _rank_key(t: FrozenTrial) -> tuple[float, float, int]:
    score = t.user_attrs.get("score")
    return (-(score if score is not None else -math.inf), t.user_attrs.get("latency_median_ms", math.inf), t.number)


def trials_frame(study: optuna.Study, recheck_limit_ms: float, rechecks: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: state, score, #params, FLOPs, latency, feasibility, re-check, config.

    A feasible trial is `dropped` when its re-measured median exceeds `recheck_limit_ms` (or the
    re-measurement failed)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        key = a.get("config_key")
        rc = rechecks.get(key) if key else None
        is_feasible = feasible(t)
        rows.append({
            "trial": t.number, "state": t.state.name, "score": a.get("score"), "score_spread": a.get("score_spread"),
            "params": a.get("params"), "flops": a.get("flops"),
            "latency_median_ms": a.get("latency_median_ms"), "latency_p90_ms": a.get("latency_p90_ms"),
            "latency_iqr_ms": a.get("latency_iqr_ms"), "latency_cached": a.get("latency_cached"),
            "latency_source": a.get("latency_source"), "latency_predicted_ms": a.get("latency_predicted_ms"),
            "feasible": is_feasible,
            "rechecked": rc is not None,
            "recheck_median_ms": rc.get("median_ms") if rc else None,
            "recheck_p90_ms": rc.get("p90_ms") if rc else None,
            "dropped": bool(is_feasible and rc is not None
                            and (rc.get("median_ms") is None or rc["median_ms"] > recheck_limit_ms)),
            "error": a.get("error"), "interrupted": bool(a.get("interrupted") or a.get("lost")),
            "retry_of": a.get("retry_of"),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "config_key": key,
            "config": json.dumps(a["config"], sort_keys=False) if "config" in a else None,
            **{f"param_{k}": v for k, v in t.params.items()},
        })
    columns = ["trial", "state", "score", "score_spread", "params", "flops", "latency_median_ms", "latency_p90_ms",
               "latency_iqr_ms", "latency_cached", "latency_source", "latency_predicted_ms", "feasible", "rechecked", "recheck_median_ms", "recheck_p90_ms",
               "dropped", "error", "interrupted", "retry_of", "duration_s", "config_key", "config"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return frame


# --- the whole run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _restore(undo: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        undo()


class _SigtermAsInterrupt:
    """SIGTERM behaves like Ctrl-C: the trial in flight is recorded, the report written."""

    def __enter__(self) -> None:
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            pass

    @staticmethod
    def _handle(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def run_search(settings: SearchSettings, *, latency_source: LatencySource | None = None, scorer: Scorer | None = None,
               console: Any = None, report: bool = True) -> SearchResult:
    """Open or resume the study, check the budget against the smallest network, run the trials, re-measure
    the top candidates, and write the report. Raises NoFeasibleNetworkError when nothing fits and
    WorkerMismatchError when this worker may not join the study."""
    from search import report as report_mod
    from search.progress import SearchProgress

    start = time.perf_counter()
    runner = SearchStudy(settings, latency_source=latency_source, scorer=scorer)
    interrupted = False
    # Failed trials are reported by the progress display and in the report; Optuna's own warning
    # would print a traceback for a trial cut short by Ctrl-C.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with _SigtermAsInterrupt(), _restore(lambda: optuna.logging.set_verbosity(verbosity)):
        try:
            runner.open()
            if settings.check_smallest:
                try:
                    runner.check_smallest()
                except NoFeasibleNetworkError:
                    runner.discard_if_new()
                    raise
            runner.prepare_predictor()
            with SearchProgress(runner, enabled=settings.progress, console=console) as progress:
                try:
                    runner.optimize(callbacks=[progress.callback])
                except KeyboardInterrupt:
                    interrupted = True
                if not interrupted:
                    try:
                        runner.recheck(on_progress=progress.recheck)
                    except KeyboardInterrupt:
                        interrupted = True
        except KeyboardInterrupt:
            interrupted = True
            if runner.study is None or (runner.created and runner.counted_trials() == 0):
                runner.discard_if_new()
                raise
    frame = runner.trials_frame()
    result = SearchResult(study_name=settings.name, study_dir=settings.study_dir, budget_ms=settings.budget_ms,
                          trials=frame, ranking=report_mod.ranking(frame), best_config=None, interrupted=interrupted,
                          elapsed_s=time.perf_counter() - start,
                          smallest_latency_ms=runner.smallest_latency.median_ms if runner.smallest_latency else None,
                          cache_hits=runner.cache.hits, cache_misses=runner.cache.misses,
                          predictor_rejected=runner.gate.rejected if runner.gate is not None else 0)
    if not result.ranking.empty:
        result.best_config = json.loads(result.ranking.iloc[0]["config"])
    if report:
        result.files = report_mod.write_report(result, runner.study, settings)
        result.elapsed_s = time.perf_counter() - start
    return result


__all__ = ["CONSTRAINT", "DEFAULT_OBJECTIVE", "DEFAULT_RESULTS_DIR", "NoFeasibleNetworkError", "SearchResult",
           "SearchSettings", "SearchStudy", "WorkerMismatchError", "check_identity", "feasible", "make_storage",
           "parse_budget", "run_search", "trials_frame"]
