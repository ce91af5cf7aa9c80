"""`python -m search repeat`: the comparison of N runs on synthetic trial tables, two real (fake-latency) searches
that disagree, the command end to end with a deterministic fake latency, and bad input. Nothing is timed."""
from __future__ import annotations

import json
import sys

import pandas as pd
import pytest

from search.__main__ import main as search_main
from search.experiments.repeat import compare_runs
from search.experiments.repeat_report import differences_table, main, winners_table
from search.study import run_search

from tests.search_helpers import IMAGE, TINY_SPACE, FakeLatency, FakeScorer, cost, settings, tiny_space

BUDGET = 3.0


def config(i: int) -> dict:
    """A distinct valid config per i (the tiny space's smallest network, i + 1 blocks deep in its first stage)."""
    c = tiny_space().smallest(IMAGE).to_dict()
    c["stages"][0]["depth"] = i + 1
    return c


def frame(configs: list[int], fits: list[bool], *, norm: bool = True) -> pd.DataFrame:
    """A trials table as search.trials.trials_frame writes it: trial n proposes config(configs[n]); a feasible
    trial measures 2 ms and scores its config number (the highest-numbered feasible config wins), an
    over-budget one 4 ms. `norm`: with latency_norm_ms and machine_speed, as a normalising search writes them."""
    rows = []
    for n, (c, ok) in enumerate(zip(configs, fits)):
        ms = 2.0 if ok else 4.0
        rows.append({"trial": n, "state": "COMPLETE", "score": float(c) if ok else None, "params": 1000 + c,
                     "latency_median_ms": ms, **({"latency_norm_ms": ms * 1.1, "machine_speed": 1.1} if norm else {}),
                     "feasible": ok, "dropped": False, "config": json.dumps(config(c))})
    return pd.DataFrame(rows)


FITS = [True, True, False, True, False, True, True, False]


@pytest.mark.parametrize("norm", [True, False])
def test_identical_runs_agree(norm):
    runs = [frame(list(range(8)), FITS, norm=norm) for _ in range(3)]
    c = compare_runs(runs)
    assert c.reproduced and c.same_winner
    assert (c.runs, c.trials, c.leading_identical, c.first_divergence) == (3, [8, 8, 8], 8, None)
    assert (c.identical, c.same_feasibility, c.differences) == (8, 8, [])
    assert [w.trial for w in c.winners] == [6, 6, 6] and c.winners[0].config == config(6)
    assert c.winners[0].params == 1006 and c.winners[0].latency["latency_median_ms"] == 2.0
    expected = ["latency_median_ms", "latency_norm_ms", "machine_speed"] if norm else ["latency_median_ms"]
    assert c.latency_columns == expected
    assert c.sentence().startswith("The 3 runs reproduce: all 8 proposals are identical")
    assert list(winners_table(c)["trial"]) == [6, 6, 6]


@pytest.mark.parametrize("norm", [True, False])
def test_a_feasibility_flip_is_found_with_its_trial_and_the_divergence_after_it(norm):
    a = frame(list(range(8)), FITS, norm=norm)
    flipped = FITS[:3] + [False]  # trial 3 (the same config) is over budget in run 2 ...
    b = frame([0, 1, 2, 3, 20, 21, 22, 23], flipped + [True, False, False, False], norm=norm)  # ... and TPE moves on
    c = compare_runs([a, b])
    assert not c.reproduced
    assert (c.leading_identical, c.first_divergence, c.identical, c.same_feasibility) == (4, 4, 4, 3)
    (d,) = c.differences
    assert (d.trial, d.config, d.feasible) == (3, config(3), [True, False])
    assert [lat["latency_median_ms"] for lat in d.latency] == [2.0, 4.0]
    if norm:
        assert [lat["latency_norm_ms"] for lat in d.latency] == pytest.approx([2.2, 4.4])
    else:
        assert "latency_norm_ms" not in d.latency[0]
    assert [w.trial for w in c.winners] == [6, 4]  # run 2's best feasible: config 20 at trial 4
    sentence = c.sentence()
    assert "first 4 proposals are identical, then they diverge at trial 4" in sentence
    assert "3 of the 4 identical proposals" in sentence and "trial 3 fits in some runs only" in sentence
    table = differences_table(c)
    assert list(table["trial"]) == [3] and list(table["run 1 fits"]) == ["yes"] and list(table["run 2 fits"]) == ["no"]
    assert "run 2 median (ms)" in table and ("run 2 at reference speed (ms)" in table) == norm


def test_different_winners_are_found():
    a = frame(list(range(8)), FITS)
    b = frame([0, 1, 2, 3, 4, 30, 31, 32], FITS[:5] + [False, True, False])  # config 31 outscores config 6
    c = compare_runs([a, a, b])
    assert not c.same_winner and not c.reproduced and not c.differences
    assert [w.trial for w in c.winners] == [6, 6, 6] and c.winners[2].config == config(31)
    assert (c.leading_identical, c.first_divergence) == (5, 5)
    assert c.sentence().startswith("The 3 runs do not reproduce: they pick different winners (run 1: trial 6")
    # no feasible network in one run: a winner of None differs from one found
    none = frame(list(range(8)), [False] * 8)
    c = compare_runs([a, none])
    assert not c.same_winner and c.winners[1].trial is None and len(c.differences) == 5
    assert compare_runs([none, none]).sentence().startswith("The 2 runs reproduce")
    with pytest.raises(ValueError, match="two runs"):
        compare_runs([a])


def test_two_searches_whose_latencies_differ(tmp_path):
    """Real studies (fake latencies): run 2 measures every network twice as slow. TPE's random start-up proposals
    are the same in both; those between budget / 2 and the budget fit in run 1 only."""
    one = run_search(settings(tmp_path, BUDGET, storage={"study_name": "one"}), latency_source=FakeLatency(),
                     scorer=FakeScorer(), report=False)
    two = run_search(settings(tmp_path, BUDGET, storage={"study_name": "two"}),
                     latency_source=FakeLatency(lambda c: 2 * cost(c)), scorer=FakeScorer(), report=False)
    c = compare_runs([one, two])
    assert not c.reproduced and c.identical >= 1 and c.differences
    for d in c.differences:
        assert d.feasible == [True, False]
        assert d.latency[1]["latency_median_ms"] == pytest.approx(2 * d.latency[0]["latency_median_ms"])
    assert c.winners[0].trial == int(one.ranking.iloc[0]["trial"])
    assert c.winners[0].latency["latency_median_ms"] <= BUDGET


def _argv(tmp_path, *extra: str) -> list[str]:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    return ["--space", str(space), "--image-size", str(IMAGE), "--threads", "1", "--runtime", "fast",
            "--objective", "params", "--seed", "1", "--stop-max-s", "0.05", "--no-progress",
            "--lock-file", str(tmp_path / "lock"), *extra]


def test_repeat_command_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONTAINER_BENCH_RESULTS", str(tmp_path / "root"))
    code = main(["--budget-ms", "3", "5", "--times", "2", "--pause-s", "0", "--trials", "4", *_argv(tmp_path)],
                latency_source=FakeLatency(), scorer=FakeScorer())
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (out,) = (tmp_path / "root" / "search-repeat").iterdir()
    data = json.loads((out / "repeat.json").read_text())
    assert data["times"] == 2 and data["search"]["seed"] == 1 and data["search"]["trials"] == 4
    assert data["search"]["predictor"] is False  # a latency source of the caller's: the gate does not model it
    assert data["machine"] and "repeat --budget-ms 3 5" in data["command"]
    assert [b["budget_ms"] for b in data["budgets"]] == [3.0, 5.0]
    for b in data["budgets"]:
        c = b["comparison"]
        assert c["reproduced"] and c["leading_identical"] == 4 and c["differences"] == []
        assert [r["run"] for r in b["runs"]] == [1, 2] and all(r["trials"] == 4 for r in b["runs"])
        assert all((out / f"run-{i}" / b["study"] / "report.md").exists() for i in (1, 2))
        first, second = c["winners"]
        assert first["config"] == second["config"] and first["latency"]["latency_median_ms"] <= b["budget_ms"]
    md = (out / "repeat.md").read_text()
    assert "## Budget 3 ms" in md and "## Budget 5 ms" in md and "machine:" in md and "reproduce" in md
    assert "budget 5 ms, run 2/2" in captured.err
    assert "reproduce" in captured.out and "repeat.md" in captured.out


@pytest.mark.parametrize("argv, flag", [
    (["--budget-ms", "5", "--times", "1"], "--times"),
    (["--budget-ms", "5", "--pause-s", "-1"], "--pause-s"),
    (["--times", "2"], "--budget-ms"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(search_main(["repeat", *argv]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err


@pytest.mark.parametrize("budgets", [["abc"], ["5", "5"], ["0"]])
def test_bad_budgets_exit_2(tmp_path, budgets, capsys):
    assert search_main(["repeat", "--budget-ms", *budgets, "--out", str(tmp_path / "out"), *_argv(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--budget-ms" in err
    assert not (tmp_path / "out" / "run-1").exists()


def test_an_earlier_repeat_is_not_resumed(tmp_path, capsys):
    (tmp_path / "out" / "run-1").mkdir(parents=True)
    assert main(["--budget-ms", "5", "--out", str(tmp_path / "out"), *_argv(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "run-1/" in err
