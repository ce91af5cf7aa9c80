"""The throughput regression gate: `python -m bench regress` (and `make regress`).

A suite of rows is measured and compared with a reference: the suite's baseline for this machine,
committed under results/baselines/<suite name>/<machine fingerprint>.json, or another git revision
measured in the same job. A suite is a file (bench/regress/suite_file.py): rows of block kinds at
shapes, registered networks, NetworkConfig files (a search's best.json) and module:callable models,
each with its batch, runtime (bench.runtimes), dtype and threads. The project's own suite,
bench/regress/suites/default.yaml: every block kind at the 320@14x14 stage, batch 4, and
Container-Light at batch 1 on the reference ("conv@320x14 b4"), and mix, conv and Container-Light on
the fast path users ship (container.optimize; "mix@320x14 b4 fast"), so that a slowdown in
container/fast/ fails the gate as well. `--runtime reference,fast` (or `--impl`) runs every row of
the suite on the runtimes named instead. A row the baseline lacks, or holds with another
definition, is measured and reported as new, and does not fail the gate.

- Deterministic figures (parameters, fvcore MACs, CPU allocator peak bytes) come from bench.profile
  and are gated exactly: every change is reported, an increase fails.
- Time is gated with statistics. Each row is timed in several rounds; a round times single calls of
  the row and of a fixed calibration workload (a GEMM and a depthwise conv) in turn, each after two
  untimed calls of its own (bench.timing.measure_interleaved), and its figure is the median of row
  time / geometric mean of the calibration calls either side. A row regresses when the
  Hodges-Lehmann estimate of the slowdown of that normalised time is at least `--min-effect` (10%)
  AND a one-sided Mann-Whitney U test says new > reference at `--alpha` (0.01). A small but
  significant change passes; a big but insignificant one passes too.
- Workers run each row at its threads (the suite's default: 1) and a fixed glibc malloc configuration
  (see MALLOC_ENV).
- Every run appends one line per row to results/runs/regress_history.jsonl;
  `python -m bench history` plots it.

Exit status: 0 nothing regressed, 1 something regressed (with a table of what and by how much),
2 bad input (no baseline, an unreadable one, an unknown revision, ...).

A run's settings (suite, rows, rounds, min_effect, alpha, history file, console) are one GateConfig, made
once and passed to run_gate, gate_against, update_baseline, measure_sides, compare and baseline_document:

    config = regress.GateConfig(regress.load_suite("my_suite.yaml"), rounds=8, history=None)
    report = regress.run_gate(config, against="HEAD~1")  # or baseline=PATH; regress.update_baseline(config)

Modules: rows (rows, defaults), suite_file (suite files, GateConfig), statistics (the decision), worker (the
process that measures one revision) and sides (the parent side), baselines, outcome (verdicts, table, history),
cli, evaluation (the gate measured), history (plots).
"""
from bench.regress.baselines import (BASELINE_DIR, SCHEMA, baseline_document, baseline_path, baseline_side,
                                     changed_rows, load_baseline)
from bench.regress.cli import configure_parser, gate_against, main, run_gate, update_baseline
from bench.regress.outcome import Report, RowResult, append_history, compare, render
from bench.regress.statistics import (DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, FigureChange, TimeVerdict,
                                      compare_deterministic, decide)
from bench.regress.rows import (DEFAULT_PAIRS, DEFAULT_ROUNDS, DEFAULT_SUITE_FILE, DEFAULT_THREADS,
                                DEFAULT_UPDATE_ROUNDS, HISTORY_PATH, METHOD, Row, block_row, default_name, on_runtimes,
                                select_rows)
from bench.regress.suite_file import GateConfig, Suite, load_suite
from bench.regress.worker import DETERMINISTIC, PASSES_ENV, SLOWDOWN_ENV
from bench.regress.sides import MALLOC_ENV, Round, Side, WorkerProcess, measure_sides, revision_tree

__all__ = [
    "BASELINE_DIR", "DEFAULT_ALPHA", "DEFAULT_MIN_EFFECT", "DEFAULT_PAIRS", "DEFAULT_ROUNDS", "DEFAULT_SUITE_FILE",
    "DEFAULT_THREADS", "DEFAULT_UPDATE_ROUNDS", "DETERMINISTIC", "FigureChange", "GateConfig", "HISTORY_PATH",
    "MALLOC_ENV", "METHOD", "PASSES_ENV", "Report", "Round", "Row", "RowResult", "SCHEMA", "SLOWDOWN_ENV", "Side",
    "Suite", "TimeVerdict", "WorkerProcess", "append_history", "baseline_document", "baseline_path",
    "baseline_side", "block_row", "changed_rows", "compare", "compare_deterministic", "configure_parser", "decide",
    "default_name", "gate_against", "load_baseline", "load_suite", "main", "measure_sides", "on_runtimes", "render",
    "revision_tree", "run_gate", "select_rows", "update_baseline",
]
