"""The search: an Optuna study over the space, latency as a constraint, a proxy score as objective.

Seams, along Optuna's own: the settings (search.settings); the storage and the join protocol
(search.storage: a journal file in the study directory by default, any Optuna storage URL
otherwise); the sampler, TPE constrained through `trial.set_constraint` (Optuna 5's core constraint
API, which TPE and `study.best_trials` read); the trials and their table (search.trials). Every
trial's latency comes from one `LatencySource` (search.latency: bench, behind a persistent cache,
behind the predictor gate unless `--no-predictor`); scores come from a `Scorer` (a training-free proxy
by default; with `--objective accuracy` each feasible candidate is trained and may be pruned, see
search.scoring.accuracy).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
import warnings
from typing import Any, Callable, Iterator

import optuna
import pandas as pd
from optuna.trial import FrozenTrial

import container
from container import NetworkConfig

from search.scoring.accuracy import ACCURACY, AccuracyScorer, is_training_scorer, make_pruner, train_trial
from search.latency import (BenchLatency, CachedLatency, Latency, LatencySource, MachineLock, MeasurementError,
                            PredictorGate, config_key)
from search.predictor import LatencyPredictor
from search.progress import SearchProgress, predictor_progress
from search.scoring.proxies import ProxyScorer, Scorer, Scores, count_flops, count_params
from search.finalists import choose as choose_finalists
from search.finalists import train_finalists, training_seeds
from search.report import ranking, write_report
from search.scaled import base_network, starting_params
from search.settings import NoFeasibleNetworkError, SearchSettings
from search.storage import (join_study, make_storage, recover_lost_trials, share_reference_speed, this_worker,
                            worker_ordinal)
from search.trials import (CONSTRAINT, Recheck, SearchResult, TrialRecord, counts_toward_target, feasible, rank_key,
                           trials_frame)

MAX_PROPOSALS_PER_TRIAL = 10  # at most 10 proposals per --trials, when a predictor rejects most of them
RECHECK_PREFIX = "recheck:"  # a study user attribute per re-checked architecture: recheck:<config_key> -> Recheck
# A study user attribute per finalist training: finalist:<config_key> for the first training seed (the name it had
# when there was one), finalist:<config_key>#<seed> for the others -> {"accuracy", "identity" (Finalists.identity)}
FINALIST_PREFIX = "finalist:"

if not hasattr(optuna.trial.Trial, "set_constraint"):  # pragma: no cover - depends on the installed Optuna
    raise ImportError(f"search needs optuna>=5.0 (trial.set_constraint); this is optuna {optuna.__version__}")


class SearchStudy:
    """One worker's view of a study: open (or create) it, run trials, re-check, summarise."""

    def __init__(self, settings: SearchSettings, *, latency_source: LatencySource | None = None,
                 scorer: Scorer | None = None):
        self.settings = s = settings
        self.lock = MachineLock(s.measuring.lock_file)
        # On this machine: a candidate whose interval contains the budget (or, re-checked, the re-check's limit)
        # is timed until it is clear which side it is on.
        bench_source = BenchLatency(s.deployment, s.measuring.stop, self.lock) if latency_source is None else None
        source = latency_source if bench_source is None else bench_source.deciding(s.budget_ms)
        self.recheck_source = bench_source.deciding(s.recheck_limit_ms) if bench_source is not None else None
        self.identity = s.identity()
        context = {"fingerprint": self.identity["fingerprint"], "deployment": self.identity["deployment"]}
        self.cache = CachedLatency(source, s.study_dir / "latency_cache.json", context, lock=self.lock)
        # The one source every trial asks. The predictor gate (Measuring.gates) screens a candidate in front of the
        # cache; what it lets through, the smallest network and every re-check are measured for real.
        self.latency: LatencySource = self.cache
        self.predictor: LatencyPredictor | None = None
        self.gate: PredictorGate | None = None
        if s.measuring.gates(s.deployment.runtime, measured_here=latency_source is None):
            # The same lock object: it is re-entrant, and the table is measured under it too.
            self.predictor = LatencyPredictor(s.deployment, lock=self.lock, directory=s.measuring.predictor_dir)
            self.gate = PredictorGate(self.predictor, self.cache, s.budget_ms, s.measuring.predictor_margin)
            self.latency = self.gate
        if scorer is not None:
            self.scorer = scorer
        elif s.objective == ACCURACY:
            # The machine lock: training beside another worker's latency measurement would slow it.
            self.scorer = AccuracyScorer(s.dataset(), s.scoring.training, seed=s.sampling.seed or 0, lock=self.lock)
        else:
            self.scorer = ProxyScorer(s.objective, inits=s.scoring.proxy_inits, batch_size=s.scoring.proxy_batch,
                                      device=s.deployment.device, seed=s.sampling.seed or 0,
                                      threads=s.deployment.threads)
        self.storage: optuna.storages.BaseStorage | None = None
        self.study: optuna.Study | None = None
        self.created = False
        self._created_dir = False
        self.smallest_latency: Latency | None = None

    # --- opening and joining ----------------------------------------------------------------------

    def open(self) -> optuna.Study:
        s = self.settings
        self._created_dir = not s.study_dir.exists()
        self.storage = make_storage(s.storage.url, s.study_dir)
        names = {summary.study_name for summary in optuna.get_all_study_summaries(self.storage)}
        self.created = s.name not in names
        directions = ["maximize", "minimize"] if s.pareto else ["maximize"]
        seed = s.sampling.seed
        if not self.created and seed is not None:
            # A resumed run must not replay the random start-up proposals already tried.
            seed += len(self.storage.get_all_trials(self.storage.get_study_id_from_name(s.name), deepcopy=False))
        sampler = make_sampler(s.sampling.sampler, seed)
        pruner = make_pruner(s.scoring.pruner or "none", s.scoring.training.epochs)
        self.study = optuna.create_study(study_name=s.name, storage=self.storage, sampler=sampler, pruner=pruner,
                                         directions=directions, load_if_exists=True)
        join_study(self.study, self.identity, s.deployment)
        if self.recheck_source is not None:  # measured here: every worker of the study uses one reference speed
            share_reference_speed(self.study, s.deployment)
        ordinal = worker_ordinal(self.study)
        if ordinal and seed is not None:
            # Workers started together by the same command would otherwise all propose the same
            # start-up trials: each later worker of the study gets its own (still reproducible) seed.
            self.study.sampler = make_sampler(s.sampling.sampler, seed + 100_003 * ordinal)
        recover_lost_trials(self.study, self.storage)
        return self.study

    def discard_if_new(self) -> None:
        """Remove a study this run created and that holds no finished trial (nothing to pass off as a result)."""
        if not self.created or self.study is None:
            return
        if any(counts_toward_target(t) for t in self.trials()):
            return
        try:
            optuna.delete_study(study_name=self.study.study_name, storage=self.storage)
        except Exception:
            pass
        if self._created_dir and self.settings.storage.url is None:
            shutil.rmtree(self.settings.study_dir, ignore_errors=True)

    # --- the objective --------------------------------------------------------------------------------

    def check_smallest(self) -> Latency:
        """Measure the smallest network of the space first: a budget below it cannot be met."""
        s = self.settings
        config = s.space.smallest(s.deployment.image_size)
        latency = self.cache.measure(config)
        self.smallest_latency = latency
        if latency.deciding_ms > s.budget_ms:
            raise NoFeasibleNetworkError(
                f"--budget-ms {s.budget_ms:g}: below the smallest network in the space, which measures "
                f"{latency.deciding_ms:.2f} ms (median at the machine's reference speed; {latency.median_ms:.2f} ms "
                f"as measured) at batch {s.deployment.batch_size}, "
                f"{s.deployment.image_size}px on {s.deployment.device} with runtime {s.deployment.runtime}; "
                f"raise the budget or shrink the space")
        return latency

    def start_from_family(self) -> int:
        """With `--start scaled`, a new study's first trials are the scaled Container-Light members nearest in the
        space that fit the budget (search.scaled.starting_params; measured through the study's cache, so the trials
        reuse the figures). Enqueued once: a study that already holds trials, or the same params, is left alone.
        Returns how many were enqueued."""
        s = self.settings
        if s.sampling.starts_from != "scaled" or self.study is None or self.trials():
            return 0
        try:
            base = base_network(s.space, s.deployment.image_size)
        except ValueError:  # an image size Container-Light cannot take: the sampler starts on its own
            return 0
        starts = starting_params(s.space, base, s.budget_ms, self.cache)
        for params in starts:
            self.study.enqueue_trial(params, user_attrs=TrialRecord(start="scaled").to_attrs(), skip_if_exists=True)
        return len(starts)

    def prepare_predictor(self, console: Any = None) -> None:
        """Calibrate the predictor for this setting on first use on a machine: minutes, behind a progress bar."""
        if self.predictor is not None and self.predictor.calibration is None:
            with predictor_progress(enabled=self.settings.report.progress, console=console) as on_measure:
                self.predictor.ensure_calibrated(self.settings.space, on_measure=on_measure)

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        s = self.settings
        record = TrialRecord(worker=this_worker())
        record.write(trial)  # first: a worker killed from here on has its trial recovered (search.storage)
        try:
            config = s.space.suggest(trial, s.deployment.image_size)
            record.config = config.to_dict()
            record.config_key = config_key(config, self.cache.context)
            record.runtime = s.deployment.runtime
            record.write(trial)
            latency = self.latency.measure(config)
            trial.set_constraint(CONSTRAINT, latency.deciding_ms - s.budget_ms)
            # optuna-dashboard (0.21) reads only the list that Optuna < 5 kept under "constraints", not
            # set_constraint's "constraints:<name>", and would draw every over-budget trial as feasible. Optuna 5
            # reads both (the copy as constraint "0"): feasibility and TPE's order of violations are unchanged.
            trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [latency.deciding_ms - s.budget_ms])
            record.note_latency(latency)
            record.write(trial)
            fits = latency.deciding_ms <= s.budget_ms
            if is_training_scorer(self.scorer):  # an over-budget candidate is never trained
                scores = (train_trial(trial, self.scorer, config, report=not s.pareto, record=record) if fits
                          else _size_only(self.scorer, config))
            elif fits or s.scoring.score_infeasible:
                scores = self.scorer.evaluate(config)
            else:
                scores = _size_only(self.scorer, config)
            record.params = int(scores.params)
            record.flops = int(scores.flops)
            scored = not math.isnan(scores.score)  # NaN: not scored (over budget); -inf: scored, degenerate
            record.scored = scored
            record.score_spread = scores.spread if math.isfinite(scores.spread) else None
            score = scores.score if scored else -math.inf
            record.score = score if math.isfinite(score) else None
            record.write(trial)
        except KeyboardInterrupt:
            record.interrupted = True
            record.write(trial)
            raise
        except (MeasurementError, RuntimeError) as e:
            record.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            record.write(trial)
            raise
        return (score, latency.deciding_ms) if s.pareto else score

    # --- running --------------------------------------------------------------------------------------

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def counted_trials(self) -> int:
        return sum(counts_toward_target(t) for t in self.trials())

    def optimize(self, callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
        s = self.settings
        target = s.sampling.n_trials
        if target is not None and self.counted_trials() >= target:
            return
        # stop_at_target ends the run; candidates a predictor rejected do not count toward it, and the cap stops a
        # budget it puts nearly every candidate over from proposing forever.
        remaining = None if target is None else max(0, MAX_PROPOSALS_PER_TRIAL * target - len(self.trials()))

        def stop_at_target(study: optuna.Study, trial: FrozenTrial) -> None:
            # Other workers add trials too: stop when the study as a whole reaches its target.
            if target is not None and self.counted_trials() >= target:
                study.stop()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.optimize(self.objective, n_trials=remaining, timeout=s.sampling.timeout_s,
                                callbacks=[*callbacks, stop_at_target], catch=(MeasurementError, RuntimeError),
                                gc_after_trial=False)

    # --- re-checking ------------------------------------------------------------------------------------

    def rechecks(self) -> dict[str, Recheck]:
        """Every re-check of the study so far, by config_key."""
        return {k.removeprefix(RECHECK_PREFIX): Recheck.from_attrs(v) for k, v in self.study.user_attrs.items()
                if k.startswith(RECHECK_PREFIX)}

    def recheck(self, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Recheck]:
        """Measure the top feasible architectures again; any that no longer fit are marked and dropped.

        A candidate stays when the mean of its two figures (the trial's and the re-check's, both at the
        machine's reference speed) is within the re-check's limit: two measurements minutes apart average
        out more of the machine's drift than either alone, and the best candidates, which sit at the
        budget by construction, are then kept or dropped the same way from one run to the next more often."""
        s = self.settings
        done = self.rechecks()
        candidates: list[tuple[FrozenTrial, TrialRecord]] = []
        seen: set[str | None] = set()
        for t in sorted((t for t in self.trials() if feasible(t)), key=rank_key):
            record = TrialRecord.of(t)
            if record.config is None or record.config_key in seen:
                continue
            seen.add(record.config_key)
            candidates.append((t, record))
        if s.report.recheck is not None:
            candidates = candidates[:s.report.recheck]
        todo = [(t, record) for t, record in candidates if record.config_key not in done]
        for i, (t, record) in enumerate(todo):
            if on_progress:
                on_progress(i, len(todo))
            config = NetworkConfig.from_dict(record.config)
            try:
                latency = self.cache.remeasure(config, self.recheck_source)
                decided = (latency.deciding_ms + record.deciding_ms) / 2
                entry = Recheck(norm_ms=latency.deciding_ms, median_ms=latency.median_ms, p90_ms=latency.p90_ms,
                                iqr_ms=latency.iqr_ms, decided_ms=decided, fits=decided <= s.recheck_limit_ms,
                                trial=t.number)
            except MeasurementError as e:
                entry = Recheck(fits=False, trial=t.number, error=str(e))
            self.study.set_user_attr(f"{RECHECK_PREFIX}{record.config_key}", entry.to_attrs())
            done[record.config_key] = entry
        if on_progress:
            on_progress(len(todo), len(todo))
        return done

    # --- choosing the winner among the finalists ------------------------------------------------------------

    def train_finalists(self) -> int:
        """Train the finalists (search.finalists) not trained yet; the ranking puts them first, by accuracy. Not
        with --objective accuracy (the score is trained accuracy), --pareto, or --finalists 0."""
        s = self.settings
        if s.objective == ACCURACY or s.pareto or s.finalists.count == 0:
            return 0
        frame = self.frame()
        done = self.finalist_trainings()
        seeds = self.finalist_seeds
        search_seed = s.sampling.seed or 0

        def store(key: str, seed: int, accuracy: float) -> None:
            k = seeds.index(seed)
            self.study.set_user_attr(f"{FINALIST_PREFIX}{key}" + (f"#{seed}" if k else ""),
                                     {"accuracy": accuracy, "identity": s.finalists.identity(search_seed, k)})
        return train_finalists(frame, choose_finalists(frame, s.finalists.count), s.finalists, seeds,
                               lambda key, seed: (key, seed) in done, store, self.lock)

    @property
    def finalist_seeds(self) -> list[int]:
        return training_seeds(self.settings.sampling.seed or 0, self.settings.finalists.seeds)

    def finalist_trainings(self) -> dict[tuple[str, int], float]:
        """Every finalist training in the study that this run would train the same way (the same data, fidelity and
        seed; search.settings.Finalists.identity): (config_key, training seed) -> validation accuracy."""
        s = self.settings
        if s.finalists.count == 0 or s.finalists.dataset() is None:
            return {}
        seeds = self.finalist_seeds
        identities = {s.finalists.identity(s.sampling.seed or 0, k): seed for k, seed in enumerate(seeds)}
        return {(k.removeprefix(FINALIST_PREFIX).split("#")[0], identities[v["identity"]]): float(v["accuracy"])
                for k, v in self.study.user_attrs.items()
                if k.startswith(FINALIST_PREFIX) and isinstance(v, dict) and v.get("identity") in identities}

    def finalist_accuracies(self) -> dict[str, float]:
        """Every finalist's validation accuracy, by config_key: the mean over the training seeds, for those trained
        with every one."""
        by_key: dict[str, list[float]] = {}
        for (key, _), accuracy in self.finalist_trainings().items():
            by_key.setdefault(key, []).append(accuracy)
        return {key: sum(a) / len(a) for key, a in by_key.items() if len(a) == len(self.finalist_seeds)}

    def frame(self) -> pd.DataFrame:
        """The trials' table with their re-checks and the finalists' accuracies."""
        s = self.settings
        return trials_frame(self.trials(), s.recheck_limit_ms, self.rechecks(), self.finalist_accuracies())


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """`--sampler`: TPE reads the latency constraint; random search ignores it (the baseline TPE must beat)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _size_only(scorer: Scorer, config: NetworkConfig) -> Scores:
    """#params and FLOPs without the (costly) score, for an over-budget trial."""
    size = getattr(scorer, "size", None)
    if size is not None:
        params, flops = size(config)
        return Scores(math.nan, params, flops)
    model = container.build(config)
    return Scores(math.nan, count_params(model), count_flops(model, config))


# --- the whole run -----------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _optuna_errors_only() -> Iterator[None]:
    """Failed trials are reported by the progress display and in the report; Optuna's own warning
    would print a traceback for a trial cut short by Ctrl-C."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def run_search(settings: SearchSettings, *, latency_source: LatencySource | None = None, scorer: Scorer | None = None,
               console: Any = None, report: bool = True) -> SearchResult:
    """Open or resume the study, check the budget against the smallest network, run the trials, re-measure
    the top candidates, and write the report. Raises NoFeasibleNetworkError when nothing fits and
    WorkerMismatchError when this worker may not join the study."""
    start = time.perf_counter()
    runner = SearchStudy(settings, latency_source=latency_source, scorer=scorer)
    interrupted = False
    with _SigtermAsInterrupt(), _optuna_errors_only():
        try:
            runner.open()
            if settings.measuring.check_smallest:
                try:
                    runner.check_smallest()
                except NoFeasibleNetworkError:
                    runner.discard_if_new()
                    raise
            runner.start_from_family()
            runner.prepare_predictor(console)
            with SearchProgress(runner, title=f"search {settings.name}", target=settings.sampling.n_trials,
                                budget_ms=settings.budget_ms, objective=settings.objective,
                                enabled=settings.report.progress, console=console) as progress:
                try:
                    runner.optimize(callbacks=[progress.callback])
                except KeyboardInterrupt:
                    interrupted = True
                if not interrupted:
                    try:
                        runner.recheck(on_progress=progress.recheck)
                        runner.train_finalists()
                    except KeyboardInterrupt:
                        interrupted = True
        except KeyboardInterrupt:
            interrupted = True
            if runner.study is None or (runner.created and runner.counted_trials() == 0):
                runner.discard_if_new()
                raise
    frame = runner.frame()
    result = SearchResult(study_name=settings.name, study_dir=settings.study_dir, budget_ms=settings.budget_ms,
                          runtime=settings.deployment.runtime, trials=frame,
                          ranking=ranking(frame, settings.finalists.margin), best_config=None,
                          interrupted=interrupted,
                          elapsed_s=time.perf_counter() - start,
                          smallest_latency_ms=runner.smallest_latency.deciding_ms if runner.smallest_latency else None,
                          cache_hits=runner.cache.hits, cache_misses=runner.cache.misses,
                          predictor_rejected=runner.gate.rejected if runner.gate is not None else None)
    if not result.ranking.empty:
        result.best_config = json.loads(result.ranking.iloc[0]["config"])
    if report:
        result.files = write_report(result, runner.study, settings)
        result.elapsed_s = time.perf_counter() - start
    return result


__all__ = ["SearchStudy", "make_sampler", "run_search"]
