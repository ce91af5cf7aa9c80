"""search.trials.TrialRecord and Recheck: one typed record of what the search stores on a trial, read back from
studies old and new under the attribute names it always had."""
from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.trial import TrialState

from search import Latency, Recheck, TrialRecord, make_storage, run_search
from search.trials import TRIAL_COLUMNS, trials_frame

from tests.search_helpers import FakeLatency, FakeScorer, settings

# What a completed, scored trial of a training-free search has always stored (before TrialRecord too).
COMPLETE_ATTRS = {"worker", "config", "config_key", "runtime", "latency_norm_ms", "latency_median_ms",
                  "latency_norm_low_ms", "latency_norm_high_ms", "machine_speed", "latency_runs", "latency_p90_ms",
                  "latency_iqr_ms", "latency_noisy", "latency_cached", "latency_source", "params", "flops", "scored",
                  "score_spread", "score"}


def test_write_stores_what_was_set_since_the_last_write():
    study = optuna.create_study()
    trial = study.ask()
    record = TrialRecord(worker={"host": "h", "pid": 1})
    assert record.to_attrs() == {"worker": {"host": "h", "pid": 1}}
    record.write(trial)
    record.score = None  # set explicitly: stored, even as None
    record.params = 12
    record.write(trial)
    record.write(trial)  # nothing new
    assert study.trials[0].user_attrs == {"worker": {"host": "h", "pid": 1}, "score": None, "params": 12}
    assert TrialRecord(retry_of=3).to_attrs() == {"retry_of": 3}
    assert TrialRecord().to_attrs() == {}


def test_a_record_reads_back_what_it_wrote():
    study = optuna.create_study()
    trial = study.ask()
    record = TrialRecord(config={"image_size": 32}, config_key="k", runtime="fast")
    record.note_latency(Latency(median_ms=2.0, p90_ms=2.2, iqr_ms=0.1, runs=5, norm_ms=1.8, norm_low_ms=1.7,
                                norm_high_ms=1.9, machine_speed=0.9))
    record.score, record.params, record.flops, record.scored = 3.5, 100, 1000, True
    record.write(trial)
    study.tell(trial, 3.5)
    back = TrialRecord.of(study.trials[0])
    assert back == record and back.to_attrs() == record.to_attrs()
    assert back.deciding_ms == 1.8 and not back.predicted and not back.cut_short
    assert "latency_predicted_ms" not in study.trials[0].user_attrs  # stored only where a gate screened it


def test_missing_attributes_read_as_none():
    old = TrialRecord.from_attrs({"latency_median_ms": 2.5, "score": 1.0, "something_else": 7})
    assert old.latency_norm_ms is None and old.deciding_ms == 2.5  # a study from before normalisation
    assert old.to_attrs() == {"latency_median_ms": 2.5, "score": 1.0}
    empty = TrialRecord.from_attrs({})
    assert empty.score is None and empty.config is None and math.isinf(empty.deciding_ms)
    assert not empty.interrupted and not empty.lost and not empty.cut_short
    assert TrialRecord.from_attrs({"lost": True}).cut_short


def test_a_search_stores_the_attribute_names_it_always_did(tmp_path):
    result = run_search(settings(tmp_path, sampling={"n_trials": 6}), latency_source=FakeLatency(), scorer=FakeScorer())
    study = optuna.load_study(study_name="t", storage=make_storage(None, tmp_path / "results" / "t"))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["scored"]]
    assert complete and all(set(t.user_attrs) == COMPLETE_ATTRS for t in complete)
    assert all(set(t.user_attrs) <= set(TrialRecord.NAMES) for t in study.trials)
    assert list(result.trials.columns[:len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    rechecks = {k: v for k, v in study.user_attrs.items() if k.startswith("recheck:")}
    assert rechecks and all(set(v) == {"norm_ms", "median_ms", "p90_ms", "iqr_ms", "decided_ms", "fits", "trial"}
                            for v in rechecks.values())


def test_an_old_study_still_loads_into_the_trials_table():
    """Trials and re-checks as studies before normalisation stored them: no latency_norm_ms, no decided_ms."""
    study = optuna.create_study()
    old = {"config": {"image_size": 32}, "config_key": "a", "latency_median_ms": 2.0, "latency_p90_ms": 2.1,
           "score": 5.0, "params": 10, "flops": 100}
    study.add_trial(optuna.trial.create_trial(value=5.0, user_attrs=old, system_attrs={"constraints": [-1.0]}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"interrupted": True}))
    rechecks = {"a": Recheck.from_attrs({"median_ms": 2.6, "p90_ms": 2.7, "fits": False, "trial": 0})}
    frame = trials_frame(study.trials, 2.5, rechecks)
    first, second = frame.iloc[0], frame.iloc[1]
    assert first["latency_norm_ms"] == 2.0 and first["recheck_norm_ms"] == 2.6 and bool(first["dropped"])
    assert first["config"] == '{"image_size": 32}' and bool(second["interrupted"]) and pd.isna(second["config"])
    assert Recheck.from_attrs({"median_ms": 2.4}).kept(2.5) and not Recheck(error="oom").kept(2.5)
    assert Recheck(norm_ms=2.6, decided_ms=2.4).kept(2.5)  # the mean of the two figures decides
    assert "error" not in Recheck(norm_ms=1.0).to_attrs() and Recheck(error="x").to_attrs()["error"] == "x"
