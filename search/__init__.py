"""Latency-constrained architecture search over Container-style networks.

`python -m search --budget-ms 25` explores depth, width, heads, kernel size, block kind and MLP
ratio per stage with Optuna (TPE, latency as a constraint), measures latency with bench.profile
on this device, scores with a training-free proxy, and writes a ranked report to
results/search/<study>/.

    from search import SearchSettings, run_search
    result = run_search(SearchSettings(budget_ms=25))
    container.build(result.best_config)
"""
from search.latency import (DEFAULT_STOP, BenchLatency, CachedLatency, Deployment, Latency, LatencySource, MachineLock,
                            MeasurementError, PredictedLatency, PredictorGate, default_stop)
from search.scoring.proxies import PROXIES, ProxyScorer, Scorer, Scores, list_proxies, register_proxy
from search.report import print_summary, ranking, write_report
from search.settings import (Finalists, Measuring, NoFeasibleNetworkError, Reporting, Sampling, Scoring, SearchSettings,
                             StudyStorage, WorkerMismatchError, parse_budget)
from search.space import SearchInputError, SearchSpace, SpaceError, StageSpace
from search.storage import make_storage, redacted
from search.study import SearchStudy, run_search
from search.trials import Recheck, SearchResult, TrialRecord

__all__ = [
    "BenchLatency", "CachedLatency", "DEFAULT_STOP", "Deployment", "Finalists", "Latency", "LatencySource",
    "MachineLock", "MeasurementError", "Measuring", "NoFeasibleNetworkError", "PROXIES", "PredictedLatency",
    "PredictorGate", "ProxyScorer", "Recheck", "Reporting", "Sampling", "Scorer", "Scores", "Scoring",
    "SearchInputError", "SearchResult", "SearchSettings", "SearchSpace", "SearchStudy", "SpaceError", "StageSpace",
    "StudyStorage", "TrialRecord", "WorkerMismatchError", "default_stop", "list_proxies", "make_storage",
    "parse_budget", "print_summary", "ranking", "redacted", "register_proxy", "run_search", "write_report",
]
