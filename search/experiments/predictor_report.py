"""The latency predictor's published accuracy, and what it buys the search.

`python -m search predictor-report`: build (or reuse) the lookup table and the calibration, then
measure a fresh seeded sample of architectures that were never used for fitting, for real through
bench.profile, and report the share of predictions within +-10% and +-5%, the mean absolute
percentage error and Spearman's rho (results/predictor/report.md, report.csv,
predicted_vs_measured.png, report.json).

`python -m search predictor-bench`: the same search (budget, objective, seed, time limit) run twice
from scratch, without and with the predictor gate; trials per minute, how many candidates were
measured, how many the predictor rejected, and the best feasible score each found
(results/predictor/bench.md, bench.json).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

import bench
from bench.kit import (Parser, non_negative_float, positive_float, positive_int, save_figure, writable_dir,
                       writable_file, write_json, write_table, write_text)
from bench.formatting import markdown_table

from container import NetworkConfig

from search.latency import DEFAULT_MARGIN, Deployment, MachineLock
from search.predictor import DEFAULT_FIT, FIT_SEED, LatencyPredictor
from search.space import SearchInputError, SearchSpace, config_id, sample_configs
from search.settings import (DEFAULT_OBJECTIVE, PREDICTOR_DIR, Finalists, Measuring, Reporting, Sampling,
                             SearchSettings, StudyStorage, add_runtime_argument)
from search.study import run_search

EVAL_SEED = 2000
DEFAULT_EVAL = 30


def _log(message: str) -> None:
    print(f"search: {message}", file=sys.stderr, flush=True)


def accuracy(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    err = (predicted - measured) / measured
    rho = spearmanr(predicted, measured).statistic if len(measured) > 2 else math.nan
    return {"n": int(len(measured)), "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
            "within_5pct": float(np.mean(np.abs(err) <= 0.05)), "mape_pct": float(np.mean(np.abs(err)) * 100),
            "max_ape_pct": float(np.max(np.abs(err)) * 100), "bias_pct": float(np.mean(err) * 100),
            "spearman_rho": float(rho)}


def predictor_report(deployment: Deployment, space: SearchSpace | None = None, *, n_eval: int = DEFAULT_EVAL,
                     n_fit: int = DEFAULT_FIT, eval_seed: int = EVAL_SEED, fit_seed: int = FIT_SEED,
                     refit: bool = False, out_dir: str | Path = PREDICTOR_DIR, table_path: str | Path | None = None,
                     lock_file: str | None = None, rounds: int = 3) -> dict[str, Any]:
    space = space or SearchSpace.default()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    lock = MachineLock(lock_file)

    def progress(i: int, n: int, label: str) -> None:
        if n and (i % 25 == 0 or i == n):
            _log(f"predictor table: {i}/{n} parts measured")

    predictor = LatencyPredictor(deployment, lock=lock, path=table_path, directory=out_dir, on_measure=progress)
    fit = sample_configs(space, n_fit, fit_seed, deployment.image_size)
    evaluation = sample_configs(space, n_eval, eval_seed, deployment.image_size, exclude=[config_id(c) for c in fit])
    assert not {config_id(c) for c in fit} & {config_id(c) for c in evaluation}

    t0 = time.perf_counter()
    predictor.measure_parts(predictor.missing([*fit, *evaluation]))
    table_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    cal = predictor.calibration
    if refit or cal is None or cal.fit_configs != [config_id(c) for c in fit]:
        _log(f"calibrating on {n_fit} networks (seed {fit_seed}), measured through bench.profile")
        cal = predictor.calibrate(fit)
    calibrate_s = time.perf_counter() - t0
    held_out = set(cal.fit_configs)

    _log(f"measuring {n_eval} fresh networks (seed {eval_seed}, none used for fitting), {rounds} rounds each")
    t0 = time.perf_counter()
    rows = []
    predictions = [(predictor.sums(c), predictor.predict(c)) for c in evaluation]
    assert not {config_id(c) for c in evaluation} & held_out

    def progress_networks(i: int, n: int) -> None:
        if i and i % 10 == 0:
            _log(f"{i}/{n} network measurements")

    measured = predictor.measure_networks(evaluation, rounds, on_progress=progress_networks)
    for i, (config, (sums, predicted), m) in enumerate(zip(evaluation, predictions, measured)):
        rows.append({"network": i, "predicted_ms": predicted, "raw_sum_ms": sums["blocks_ms"] + sums["other_ms"],
                     "blocks_ms": sums["blocks_ms"], "other_ms": sums["other_ms"],
                     "measured_ms": m.median_ms, "measured_p90_ms": m.p90_ms, "measured_iqr_ms": m.iqr_ms,
                     "measured_noisy": m.noisy, "rounds_ms": json.dumps([round(v, 4) for v in m.rounds_ms]),
                     "error_pct": (predicted - m.median_ms) / m.median_ms * 100,
                     "architecture": config.describe(), "config": config.to_json()})
    eval_s = time.perf_counter() - t0
    frame = pd.DataFrame(rows)
    calibrated = accuracy(frame["predicted_ms"].to_numpy(), frame["measured_ms"].to_numpy())
    raw = accuracy(frame["raw_sum_ms"].to_numpy(), frame["measured_ms"].to_numpy())
    # The measurement's own reproducibility: how often one real measurement (what a search trial takes)
    # lands within +-10% / +-5% of the network's quiet latency (its lowest median over the rounds).
    singles = np.array([v / row["measured_ms"] - 1 for row, m in zip(rows, measured) for v in m.rounds_ms])
    reproducibility = {"single_within_10pct": float(np.mean(np.abs(singles) <= 0.10)),
                       "single_within_5pct": float(np.mean(np.abs(singles) <= 0.05)),
                       "single_mape_pct": float(np.mean(np.abs(singles)) * 100), "rounds": rounds}
    quiet = frame[~frame["measured_noisy"].astype(bool)]
    quiet_acc = accuracy(quiet["predicted_ms"].to_numpy(), quiet["measured_ms"].to_numpy()) if len(quiet) > 2 else None
    env = bench.environment(deployment.device, deployment.threads)
    summary = {
        "deployment": deployment.to_dict(), "fingerprint": deployment.fingerprint(), "environment": env,
        "table": {"path": str(predictor.path), "entries": len(predictor.entries),
                  "measured_this_run": predictor.measured_parts, "stop_rule": vars(predictor.stop)},
        "calibration": cal.to_dict() | {"features": ["blocks_ms", "other_ms", "one"]},
        "eval_seed": eval_seed, "fit_seed": fit_seed, "calibrated": calibrated, "raw_sum": raw,
        "calibrated_quiet_only": quiet_acc, "measurement": reproducibility,
        "goal_met": calibrated["within_10pct"] >= 0.95,
        "seconds": {"table": table_s, "calibration": calibrate_s, "evaluation": eval_s,
                    "total": time.perf_counter() - start},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(frame, out_dir / "report.csv")
    write_json(out_dir / "report.json", summary)
    _plot(frame, out_dir / "predicted_vs_measured.png", deployment, calibrated)
    write_text(out_dir / "report.md", _markdown(summary, frame))
    summary["files"] = {k: str(out_dir / f) for k, f in (("report", "report.md"), ("csv", "report.csv"),
                                                          ("plot", "predicted_vs_measured.png"),
                                                          ("json", "report.json"))}
    return summary


def _plot(frame: pd.DataFrame, path: Path, deployment: Deployment, acc: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    m, p, r = frame["measured_ms"], frame["predicted_ms"], frame["raw_sum_ms"]
    lo, hi = 0.8 * min(m.min(), p.min(), r.min()), 1.25 * max(m.max(), p.max(), r.max())
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=0.8, label="exact")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="tab:green", alpha=0.15, label="+-10%")
    ax.scatter(m, r, s=14, marker="x", color="tab:gray", label="table sum (uncalibrated)")
    ax.scatter(m, p, s=18, color="tab:blue", label="predicted (calibrated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"{len(frame)} held-out networks, batch {deployment.batch_size}, {deployment.image_size}px, "
                 f"{deployment.threads} threads\n{acc['within_10pct']:.0%} within +-10%, MAPE {acc['mape_pct']:.1f}%, "
                 f"rho {acc['spearman_rho']:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _pct(v: float) -> str:
    return f"{v:.0%}"


def _markdown(s: dict[str, Any], frame: pd.DataFrame) -> str:
    d, env, cal = s["deployment"], s["environment"], s["calibration"]
    c, r, q = s["calibrated"], s["raw_sum"], s["calibrated_quiet_only"]
    sec = s["seconds"]
    lines = [
        "# Latency predictor: accuracy on held-out networks", "",
        f"- machine: {bench.machine_summary(env)}, torch {env['torch_version']}; "
        f"fingerprint `{s['fingerprint']}`; {env['timestamp_utc']}, commit {env['git_commit']}",
        f"- deployment: runtime {d['runtime']}, {d['device']}, batch {d['batch_size']}, "
        f"{d['image_size']}x{d['image_size']}, {d['dtype']}, {d['threads']} threads",
        f"- table: {s['table']['entries']} parts (blocks, patch embeddings, heads) measured through bench.profile "
        f"({s['table']['measured_this_run']} in this run); `{s['table']['path']}`",
        f"- calibration: `latency = {cal['coef'][0]:.3f} * sum(blocks) + {cal['coef'][1]:.3f} * sum(embeddings + head) "
        f"+ {cal['coef'][2]:.3f} ms`, fitted on {cal['n']} networks (seed {s['fit_seed']}; fit MAPE "
        f"{cal['fit_mape']:.1f}%)",
        f"- evaluation: {c['n']} networks sampled from the default space (seed {s['eval_seed']}), none used for "
        f"fitting, each measured for real {s['measurement']['rounds']} times (rounds over all networks) with the "
        "search's stop rule; its latency is the lowest of those medians (interference only adds time)",
        f"- time: table {sec['table']:.0f} s, calibration {sec['calibration']:.0f} s, "
        f"evaluation {sec['evaluation']:.0f} s, total {sec['total']:.0f} s",
        "",
    ]

    def accuracy_row(name: str, a: dict[str, Any], bold: bool = False) -> dict[str, str]:
        within = f"**{_pct(a['within_10pct'])}**" if bold else _pct(a["within_10pct"])
        return {"predictor": name, "within +-10%": within, "within +-5%": _pct(a["within_5pct"]),
                "MAPE": f"{a['mape_pct']:.1f}%", "max APE": f"{a['max_ape_pct']:.1f}%",
                "bias": f"{a['bias_pct']:+.1f}%", "Spearman rho": f"{a['spearman_rho']:.3f}"}

    rows = [accuracy_row("calibrated", c, bold=True), accuracy_row("table sum, uncalibrated", r)]
    if q is not None and q["n"] < c["n"]:
        rows.append(accuracy_row(f"calibrated, {q['n']} networks whose measurement converged (not `noisy`)", q))
    m = s["measurement"]
    rows.append({"predictor": "one real measurement (what a search trial takes), same networks",
                 "within +-10%": _pct(m["single_within_10pct"]), "within +-5%": _pct(m["single_within_5pct"]),
                 "MAPE": f"{m['single_mape_pct']:.1f}%"})
    lines.append(markdown_table(pd.DataFrame(rows).fillna(""), align="lrrrrrr"))
    lines += ["", "The last row is the noise floor: how often a single bench.profile median of the same network lands "
              "within the band around its quiet latency on this machine while it is shared.", ""]
    lines += ["", ("Goal (at least 95% within +-10%): **met**." if s["goal_met"] else
                   f"Goal (at least 95% within +-10%): **not met** ({_pct(c['within_10pct'])})."), "",
              "![predicted against measured](predicted_vs_measured.png)", "",
              "## Every held-out network", "",
              markdown_table(pd.DataFrame({
                  "#": frame["network"].astype(int), "predicted (ms)": frame["predicted_ms"].map("{:.2f}".format),
                  "measured (ms)": frame["measured_ms"].map("{:.2f}".format),
                  "IQR (ms)": frame["measured_iqr_ms"].map("{:.2f}".format),
                  "error": frame["error_pct"].map("{:+.1f}%".format), "architecture": frame["architecture"]}),
                  align="rrrrrl")]
    lines += ["", "`report.csv` has the configs as JSON; reproduce with `python -m search predictor-report`."]
    return "\n".join(lines) + "\n"


# --- trials per minute ---------------------------------------------------------------------------------


def predictor_bench(deployment: Deployment, budget_ms: float, *, seconds: float = 150.0, objective: str | None = None,
                    seed: int = 0, margin: float = DEFAULT_MARGIN, space: SearchSpace | None = None,
                    out_dir: str | Path = PREDICTOR_DIR, table_path: str | Path | None = None,
                    lock_file: str | None = None, check_rejected: int = 10) -> dict[str, Any]:
    """The same search run twice for `seconds` each, from an empty study: without and with the gate."""
    space = space or SearchSpace.default()
    objective = objective or DEFAULT_OBJECTIVE
    out_dir = Path(out_dir)
    lock = MachineLock(lock_file)
    predictor = LatencyPredictor(deployment, lock=lock, path=table_path, directory=out_dir)
    t0 = time.perf_counter()
    predictor.measure_parts(predictor.missing(sample_configs(space, 400, 5, deployment.image_size)))
    cal = predictor.ensure_calibrated(space)
    setup_s = time.perf_counter() - t0
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="predictor-bench-"))
    try:
        for mode in ("measure every candidate", "predictor gate"):
            settings = SearchSettings(
                budget_ms=budget_ms, deployment=deployment, space=space, objective=objective,
                sampling=Sampling(n_trials=100_000, timeout_s=seconds, seed=seed),
                measuring=Measuring(lock_file=lock_file, predictor=mode == "predictor gate", predictor_margin=margin,
                                    predictor_dir=out_dir),
                storage=StudyStorage(study_name="bench", results_dir=work / mode.replace(" ", "-")),
                report=Reporting(recheck=0, progress=False), finalists=Finalists(count=0))
            _log(f"bench: {mode}, {seconds:.0f} s at --budget-ms {budget_ms:g}")
            t0 = time.perf_counter()
            result = run_search(settings, report=False)
            elapsed = time.perf_counter() - t0
            trials = result.trials
            done = trials[trials["state"].isin(["COMPLETE", "PRUNED", "FAIL"])]
            feasible = trials[trials["feasible"].astype(bool)]
            best = pd.to_numeric(feasible["score"], errors="coerce").max() if len(feasible) else math.nan
            predicted = trials[trials["latency_source"] == "predicted"]
            entry = {"trials": int(len(done)), "elapsed_s": elapsed,
                     "trials_per_minute": len(done) / elapsed * 60, "feasible": int(len(feasible)),
                     "best_score": float(best), "measured": int(result.cache_misses),
                     "rejected_by_predictor": int(len(predicted))}
            if len(predicted) and check_rejected:
                # How many of the rejected would have fitted? Measure a few for real (after the timed run).
                rejected = [NetworkConfig.from_json(c) for c in predicted["config"]]
                entry["false_rejects"] = _false_rejects(predictor, rejected, budget_ms, check_rejected)
            results[mode] = entry
    finally:
        shutil.rmtree(work, ignore_errors=True)
    env = bench.environment(deployment.device, deployment.threads)
    summary = {"deployment": deployment.to_dict(), "fingerprint": deployment.fingerprint(), "environment": env,
               "budget_ms": budget_ms, "seconds_each": seconds, "objective": objective, "seed": seed,
               "margin": margin, "setup_s": setup_s, "table_entries": len(predictor.entries),
               "calibration": cal.to_dict(), "runs": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "bench.json", summary)
    write_text(out_dir / "bench.md", _bench_markdown(summary))
    summary["files"] = {"report": str(out_dir / "bench.md"), "json": str(out_dir / "bench.json")}
    return summary


def _false_rejects(predictor: LatencyPredictor, rejected: list, budget_ms: float, limit: int) -> dict[str, Any]:
    rejected = list({config_id(c): c for c in rejected}.values())
    rng = np.random.default_rng(0)
    pick = [rejected[i] for i in rng.permutation(len(rejected))[:limit]]
    fits = 0
    closest = math.inf
    for config in pick:
        ms = predictor.measure_network(config).median_ms
        fits += ms <= budget_ms
        closest = min(closest, ms / budget_ms)
    return {"checked": len(pick), "of_rejected": len(rejected), "would_have_fitted": int(fits),
            "closest_measured_over_budget": float(closest) if pick else None}


def _bench_markdown(s: dict[str, Any]) -> str:
    d, env = s["deployment"], s["environment"]
    lines = ["# Trials per minute with and without the latency predictor", "",
             f"- machine: {bench.machine_summary(env)}, torch {env['torch_version']}; "
             f"fingerprint `{s['fingerprint']}`; {env['timestamp_utc']}",
             f"- search: `--budget-ms {s['budget_ms']:g}`, objective `{s['objective']}`, seed {s['seed']}, "
             f"{s['seconds_each']:.0f} s each from an empty study, runtime {d['runtime']}, batch {d['batch_size']}, "
             f"{d['image_size']}px, "
             f"{d['threads']} threads; gate rejects a candidate predicted above budget x {1 + s['margin']:.2f}",
             f"- one-off set-up, cached per machine: table of {s['table_entries']} parts + calibration, "
             f"{s['setup_s']:.0f} s in this run (0 when cached)", "",
             markdown_table(pd.DataFrame([
                 {"run": mode, "trials": r["trials"], "trials / minute": f"**{r['trials_per_minute']:.1f}**",
                  "measured for real": r["measured"], "rejected by the predictor": r["rejected_by_predictor"],
                  "feasible": r["feasible"], "best score": f"{r['best_score']:.4g}"}
                 for mode, r in s["runs"].items()]), align="lrrrrrr")]
    gate = s["runs"].get("predictor gate", {})
    fr = gate.get("false_rejects")
    if fr:
        lines += ["", f"Of the {fr['of_rejected']} rejected candidates, {fr['checked']} were measured afterwards: "
                      f"{fr['would_have_fitted']} would have fitted the budget"
                      + (f" (the closest measured {fr['closest_measured_over_budget']:.2f} x the budget)."
                         if fr['closest_measured_over_budget'] is not None else ".")]
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------------------------


def _deployment_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment setting")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=positive_int, default=1)
    g.add_argument("--image-size", type=positive_int, default=224)
    g.add_argument("--threads", type=positive_int, default=None)
    g.add_argument("--dtype", default="fp32")
    add_runtime_argument(g)
    p.add_argument("--space", type=Path, default=None, metavar="FILE", help="search space as JSON or YAML")
    p.add_argument("--out-dir", type=writable_dir, default=PREDICTOR_DIR)
    p.add_argument("--lock-file", type=writable_file, default=None)


def _deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                      threads=args.threads, dtype=args.dtype, runtime=args.runtime)


def report_parser(prog: str = "python -m search predictor-report") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="the latency predictor's accuracy on held-out networks")
    _deployment_args(p)
    p.add_argument("--samples", type=positive_int, default=DEFAULT_EVAL,
                   help="held-out networks to measure (>= 30 for the table)")
    p.add_argument("--fit", type=int, default=DEFAULT_FIT, help="networks the calibration is fitted on")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the held-out sample")
    p.add_argument("--refit", action="store_true", help="measure the calibration networks again")
    p.add_argument("--rounds", type=positive_int, default=3, help="real measurements of each held-out network")
    return p


def bench_parser(prog: str = "python -m search predictor-bench") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="trials per minute with and without the predictor gate")
    _deployment_args(p)
    p.add_argument("--budget-ms", type=positive_float, required=True)
    p.add_argument("--seconds", type=positive_float, default=150.0, help="time limit of each of the two searches")
    p.add_argument("--objective", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=non_negative_float, default=DEFAULT_MARGIN)
    return p


def main_report(argv: Sequence[str] | None = None) -> int:
    args = report_parser().parse_args(argv)
    try:
        space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
        if args.fit < 4:
            raise SearchInputError(f"--fit {args.fit}: must be >= 4")
        summary = predictor_report(_deployment(args), space, n_eval=args.samples, n_fit=args.fit,
                                   eval_seed=args.seed, refit=args.refit, out_dir=args.out_dir, rounds=args.rounds,
                                   lock_file=args.lock_file)
    except (SearchInputError, bench.BenchInputError) as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    c = summary["calibrated"]
    print(f"{c['n']} held-out networks: {c['within_10pct']:.0%} within +-10%, {c['within_5pct']:.0%} within +-5%, "
          f"MAPE {c['mape_pct']:.1f}%, Spearman rho {c['spearman_rho']:.3f} "
          f"({summary['seconds']['total']:.0f} s). Report: {summary['files']['report']}")
    return 0


def main_bench(argv: Sequence[str] | None = None) -> int:
    args = bench_parser().parse_args(argv)
    try:
        space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
        summary = predictor_bench(_deployment(args), args.budget_ms, seconds=args.seconds, objective=args.objective,
                                  seed=args.seed, margin=args.margin, space=space, out_dir=args.out_dir,
                                  lock_file=args.lock_file)
    except (SearchInputError, bench.BenchInputError) as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    for mode, r in summary["runs"].items():
        print(f"{mode}: {r['trials']} trials in {r['elapsed_s']:.0f} s = {r['trials_per_minute']:.1f} / min "
              f"({r['measured']} measured, {r['rejected_by_predictor']} rejected by the predictor, "
              f"{r['feasible']} feasible, best {r['best_score']:.4g})")
    print(f"Report: {summary['files']['report']}")
    return 0
