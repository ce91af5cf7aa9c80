"""The user's whole way on a tiny space, through the commands the README's "From search to CI" shows: a search
writes best.json; `python -m bench --networks best.json` profiles it on two runtimes; a suite file holds it; the
gate, run as `python -m bench regress --suite ... --against REV` in a git repository, flags the commit that made
its block slower and passes an unchanged one."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import container
from bench import cli as bench_cli
from bench.env import REPO_ROOT
from search.__main__ import main as search_main

from tests.search_helpers import TINY_SPACE

# Added to container/blocks.py in the "slower" commit: every block's forward computed three times.
SLOWER_BLOCKS = '''

# Added by tests/test_search_to_ci.py: every block computed three times.
_forward_once = ContainerBlock.forward


def _forward_three_times(self, x):
    out = _forward_once(self, x)
    for _ in range(2):
        _forward_once(self, x)
    return out


ContainerBlock.forward = _forward_three_times
'''


def run_search(results: Path, space: Path) -> Path:
    study = results / "tiny"
    assert search_main(["--budget-ms", "1e6", "--trials", "3", "--objective", "params", "--study", "tiny",
                        "--space", str(space), "--image-size", "32", "--threads", "1", "--results-dir",
                        str(results), "--stop-max-s", "0.05", "--stop-min-s", "0", "--stop-min-runs", "3",
                        "--recheck", "0", "--no-progress", "--lock-file", str(results / "lock"),
                        "--no-predictor"]) == 0
    return study / "best.json"


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def gate(repo: Path, suite: Path, against: str) -> tuple[int, dict, str]:
    """`python -m bench regress` run in `repo` as a user runs it there."""
    report = repo / f"gate-{against.replace('~', '_')}.json"
    env = dict(os.environ, PYTHONPATH=str(repo))
    done = subprocess.run([sys.executable, "-m", "bench", "regress", "--suite", str(suite), "--against", against,
                           "--min-effect", "0.5", "--no-history", "--json", str(report)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, (json.loads(report.read_text()) if report.exists() else {}), done.stdout + done.stderr


@pytest.mark.slow
def test_search_then_bench_then_a_suite_gated_in_ci(tmp_path):
    # 1. The search writes best.json.
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    best = run_search(tmp_path / "results", space)
    config = container.as_config(json.loads(best.read_text()))
    assert config.image_size == 32

    # 2. The winner profiled on the two runtimes the user ships; rows say where it came from.
    out = tmp_path / "bench"
    assert bench_cli.main(["--networks", str(best), "--runtime", "reference,fast", "--quick", "--no-rss",
                           "--no-progress", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "results.csv")
    assert sorted(rows["runtime"]) == ["fast", "reference"] and set(rows["status"]) == {"ok"}
    assert set(rows["name"]) == {str(best)} and (rows["latency_median_ms"] > 0).all()
    assert rows["params"].nunique() == 1  # the same network on both runtimes

    # 3. A repository holding the project and the suite; the second commit makes every block slower.
    repo = tmp_path / "repo"
    repo.mkdir()
    for package in ("bench", "container"):
        shutil.copytree(REPO_ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "models").mkdir()
    shutil.copy(best, repo / "models" / "best.json")
    suite = repo / "my_suite.yaml"
    suite.write_text(textwrap.dedent("""
        name: mine
        threads: 1
        rows:
          - {network: models/best.json, batch: 1}
    """))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "plain")
    blocks = repo / "container" / "blocks.py"
    blocks.write_text(blocks.read_text() + SLOWER_BLOCKS)
    git(repo, "commit", "-q", "-am", "slower blocks")

    # 4. Against the commit before the slowdown: flagged (exit 1) ...
    code, report, output = gate(repo, suite, "HEAD~1")
    assert code == 1, output
    assert [r["row"] for r in report["rows"] if r["regressed"]] == ["models/best.json b1"], output
    assert report["rows"][0]["time"]["change"] > 0.5, output  # three times the block work: clearly slower
    # ... and against an unchanged revision (HEAD is this tree): passes (exit 0).
    code, report, output = gate(repo, suite, "HEAD")
    assert code == 0 and not any(r["regressed"] for r in report["rows"]), output
