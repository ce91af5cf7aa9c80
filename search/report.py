"""The report of a study: ranking.csv, best.json, report.md with plots, and a terminal summary.

Every file goes through bench.kit's atomic writers, so a run killed while reporting leaves the
previous report intact.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.env import machine_summary
from bench.formatting import fixed, markdown_table, number, si
from bench.kit import save_figure, write_json, write_table, write_text
from container import as_config

from search.scoring.accuracy import ACCURACY
from search.settings import VALIDATION_DIR, SearchSettings
from search.scoring.training import adapt_config
from search.storage import redacted
from search.report_plots import (importances, plot_history, plot_importances, plot_learning_curves,
                                 plot_score_vs_latency)
from search.trials import SearchResult, TrialRecord, feasible

RANKING_COLUMNS = ["rank", "trial", "score", "score_spread", "finalist_accuracy", "accuracy", "epochs_trained",
                   "train_s", "params", "flops",
                   "latency_norm_ms", "latency_median_ms", "machine_speed", "latency_p90_ms",
                   "latency_iqr_ms", "runtime", "rechecked", "recheck_norm_ms", "recheck_median_ms", "recheck_p90_ms",
                   "pareto",
                   "duplicate_of", "architecture", "config"]
TOP_N = 10


# --- tables -------------------------------------------------------------------------------------------


def pareto_mask(score: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Points no other point beats on both score (higher) and latency (lower)."""
    n = len(score)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better = (score >= score[i]) & (latency <= latency[i]) & ((score > score[i]) | (latency < latency[i]))
        mask[i] = not better.any()
    return mask


def ranking(trials: pd.DataFrame, incumbent_margin: float = 0.0) -> pd.DataFrame:
    """Every feasible trial that survived its re-measurement: the finalists first, most accurate first, a scaled start's
    accuracy counted `incumbent_margin` higher (search.finalists); then best score first (then faster, then
    earlier)."""
    if trials.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    keep = trials[trials["feasible"].astype(bool) & ~trials["dropped"].astype(bool)].copy()
    if keep.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    keep["_score"] = pd.to_numeric(keep["score"], errors="coerce").fillna(-math.inf)
    # The finalists (search.finalists) first, by their trained accuracy; then the rest by the objective.
    finalist = keep["finalist_accuracy"] if "finalist_accuracy" in keep else pd.Series(math.nan, index=keep.index)
    keep["finalist_accuracy"] = pd.to_numeric(finalist, errors="coerce")
    scaled = keep["start"].eq("scaled") if "start" in keep else pd.Series(False, index=keep.index)
    keep["_finalist"] = (keep["finalist_accuracy"] + incumbent_margin * scaled).fillna(-math.inf)
    keep = keep.sort_values(["_finalist", "_score", "latency_norm_ms", "trial"], ascending=[False, False, True, True])
    keep = keep.drop(columns=["_score", "_finalist"]).reset_index(drop=True)
    keep.insert(0, "rank", np.arange(1, len(keep) + 1))
    first = {}
    dup = []
    for key, trial in zip(keep["config_key"], keep["trial"]):
        dup.append(first.get(key))
        first.setdefault(key, trial)
    keep["duplicate_of"] = pd.array(dup, dtype="Int64")
    unique = keep["duplicate_of"].isna().to_numpy()
    score = pd.to_numeric(keep["score"], errors="coerce").fillna(-math.inf).to_numpy()
    mask = np.zeros(len(keep), dtype=bool)
    mask[unique] = pareto_mask(score[unique], keep["latency_norm_ms"].to_numpy(dtype=float)[unique])
    keep["pareto"] = mask
    keep["architecture"] = [as_config(c).describe() for c in keep["config"]]
    return keep[RANKING_COLUMNS]


def _markdown_table(frame: pd.DataFrame, objective: str, runtime: str) -> str:
    columns = {  # by position: the objective may be called "params" or "flops" too
        "rank": frame["rank"].astype(int), "trial": frame["trial"].astype(int), "score": frame["score"].map(number),
        **({"epochs": frame["epochs_trained"].map(lambda v: number(v, 3)), "training (s)": frame["train_s"].map(fixed)}
           if objective == ACCURACY else {}),
        "params": frame["params"].map(si), "FLOPs": frame["flops"].map(si),
        f"latency on {runtime} (ms, reference speed)": frame["latency_norm_ms"].map(fixed),
        "as measured (ms)": frame["latency_median_ms"].map(fixed),
        "re-measured (ms, reference speed)": frame["recheck_norm_ms"].map(fixed),
        "architecture (depth x dim / heads, kind, kernel, MLP ratio per stage)": frame["architecture"]}
    table = pd.DataFrame(columns)
    table.columns = [("validation accuracy" if objective == ACCURACY else objective) if name == "score" else name
                     for name in columns]
    return markdown_table(table, align="r" * (len(columns) - 1) + "l") + "\n"


# --- plots ---------------------------------------------------------------------------------------------


def write_report(result: SearchResult, study: optuna.Study, settings: SearchSettings) -> dict[str, Path]:
    out = Path(result.study_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    trials, rank = result.trials, result.ranking
    write_table(trials, out / "trials.csv")
    files["trials"] = out / "trials.csv"
    stop, dataset = settings.measuring.stop, settings.dataset()
    write_json(out / "study.json", {
        # The storage as it may be written down: a URL's password never is (search.storage.redacted).
        "study": result.study_name, "storage": redacted(settings.storage.url) or str(out / "study.journal"),
        "budget_ms": settings.budget_ms, "objective": settings.objective, "pareto": settings.pareto,
        "sampler": settings.sampling.sampler, "start": settings.sampling.starts_from,
        "deployment": settings.deployment.to_dict(), "fingerprint": settings.deployment.fingerprint(),
        "environment": study.user_attrs.get("environment"), "space": settings.space.to_dict(),
        "reference_speed": study.user_attrs.get("reference_speed"),
        "stop_rule": vars(stop) if hasattr(stop, "__dict__") else str(stop),
        "proxy": {"inits": settings.scoring.proxy_inits, "batch": settings.scoring.proxy_batch},
        **({"training": {"data": dataset.identity(), "source": dataset.source,
                         **settings.scoring.training.identity(), "seed": settings.sampling.seed or 0,
                         "pruner": settings.scoring.pruner, "seconds": _training_seconds(trials)}}
           if settings.objective == ACCURACY and dataset is not None else {})})
    files["study"] = out / "study.json"

    if rank.empty:
        # Nothing fits: no ranking and no winner, and no stale ones from an earlier run either.
        for stale in ("ranking.csv", "best.json"):
            (out / stale).unlink(missing_ok=True)
    else:
        write_table(rank, out / "ranking.csv")
        files["ranking"] = out / "ranking.csv"
        write_json(out / "best.json", result.best_config)
        files["best"] = out / "best.json"

    plots: dict[str, Path] = {}
    if not trials.empty and (trials["state"] == "COMPLETE").any():
        fig = plot_score_vs_latency(trials, rank, settings.budget_ms, settings.objective)
        plots["score_vs_latency"] = save_figure(fig, out / "score_vs_latency.png", dpi=120)
        plt.close(fig)
        fig = plot_history(trials, settings.objective)
        plots["history"] = save_figure(fig, out / "history.png", dpi=120)
        plt.close(fig)
        complete = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        dropped = set(trials.loc[trials["dropped"].astype(bool), "trial"])
        score_imp = importances(study, [t for t in complete if feasible(t) and t.number not in dropped],
                                lambda t: TrialRecord.of(t).score)
        latency_imp = importances(study, complete, lambda t: TrialRecord.of(t).deciding_ms)
        fig = plot_importances(score_imp, latency_imp)
        if fig is not None:
            plots["importances"] = save_figure(fig, out / "importances.png", dpi=120)
            plt.close(fig)
    if settings.objective == ACCURACY:
        winner = int(rank.iloc[0]["trial"]) if not rank.empty else None
        fig = plot_learning_curves(study.get_trials(deepcopy=False), winner)
        if fig is not None:
            plots["learning_curves"] = save_figure(fig, out / "learning_curves.png", dpi=120)
            plt.close(fig)
    files.update(plots)
    write_text(out / "report.md", markdown(result, settings, study, plots))
    files["report"] = out / "report.md"
    return files


def _training_seconds(trials: pd.DataFrame) -> float:
    if "train_s" not in trials:
        return 0.0
    return float(pd.to_numeric(trials["train_s"], errors="coerce").fillna(0).sum())


def evidence(objective: str, validation_dir: Path | None = None) -> list[str]:
    """What is known about how well `objective` ranks this space's architectures (validate-proxy's report in
    `validation_dir`, default VALIDATION_DIR)."""
    try:
        summary = json.loads(((validation_dir or VALIDATION_DIR) / "report.json").read_text())
    except (OSError, ValueError):
        summary = {}
    data = summary.get("data") or ""
    data = str(data.get("name", "") if isinstance(data, dict) else data)  # a dict in reports before issue 16
    on_fashion = "fashion" in data.lower() and bool(summary.get("complete", False))
    fashion = "`python -m search validate-proxy --data fashion-mnist`"
    lines = ["## Evidence for this objective", ""]
    if objective == ACCURACY:
        lines.append("The score is measured accuracy itself: the validation accuracy of each architecture, adapted "
                     "to the data and trained at the fidelity above (the rule in search/scoring/training.py). How well "
                     "accuracy at this low fidelity ranks architectures, and its seed-to-seed noise ceiling, is what "
                     f"{fashion} measures; " + ("see results/proxy_validation/report.md." if on_fashion else
                                              "that validation has not been run yet, so both are unmeasured."))
        return lines + [""]
    row = next((r for r in summary.get("correlations", []) if r.get("score") == objective), None)
    if row:
        s, noise = summary.get("settings") or {}, summary.get("noise_ceiling") or {}
        lines.append(f"`validate-proxy` on {data or 'its data'} ({s.get('archs', '?')} architectures, "
                     f"{len(s.get('seeds', [])) or '?'} training seeds): Spearman rho of `{objective}` with trained "
                     f"accuracy {row['spearman']:.2f} [{row['spearman_lo']:.2f}, {row['spearman_hi']:.2f}] (95% "
                     f"bootstrap); the accuracies' own seed-to-seed rho {noise.get('spearman', math.nan):.2f} "
                     "(results/proxy_validation/report.md).")
    else:
        lines.append(f"No validation of `{objective}` against trained accuracy on this space has been run.")
    if not on_fashion:
        lines.append(f"The Fashion-MNIST validation ({fashion}) has not been run yet: whether `{objective}` tracks "
                     "accuracy on real images is unproven. `--objective accuracy --data fashion-mnist` ranks by "
                     "measured accuracy instead.")
    return lines + [""]


def _winner_rule(trials: pd.DataFrame, settings: SearchSettings) -> str:
    f = settings.finalists
    trained = trials.drop_duplicates("config_key")["finalist_accuracy"].notna().sum() if len(trials) else 0
    if trained:
        data = f.dataset()
        return (f"the most accurate of {trained} finalists (the top {f.count} by the objective and the best scaled "
                f"start, search.finalists), trained on {data.describe() if data else f.data} at "
                f"{f.training.describe()}" + (f", {f.seeds} training seeds" if f.seeds > 1 else "")
                + (f", the scaled start kept unless beaten by more than {f.margin:g}" if f.margin else "")
                + "; `finalist_accuracy` is their validation accuracy" + (" (the mean over the seeds)" if f.seeds > 1
                                                                         else ""))
    why = (f.unavailable.split(";")[0] if f.unavailable else "--finalists 0" if f.count == 0 else
           "--objective accuracy" if settings.objective == ACCURACY else "--pareto" if settings.pareto else
           "fewer than two candidates")
    return f"the best by the objective (no finalists trained: {why})"


def markdown(result: SearchResult, settings: SearchSettings, study: optuna.Study, plots: dict[str, Path]) -> str:
    trials, rank = result.trials, result.ranking
    d, scoring, measuring, recheck = settings.deployment, settings.scoring, settings.measuring, settings.report
    env = study.user_attrs.get("environment") or {}
    n = lambda mask: int(mask.sum()) if len(trials) else 0  # noqa: E731
    complete = trials["state"] == "COMPLETE" if len(trials) else pd.Series(dtype=bool)
    fits = trials["feasible"].astype(bool) if len(trials) else pd.Series(dtype=bool)
    dropped = trials[trials["dropped"].astype(bool)] if len(trials) else trials
    lines = [f"# Latency-constrained search: {result.study_name}", ""]
    if result.interrupted:
        lines += ["> **Interrupted.** This report covers the trials so far"
                  + ("" if rank.empty or rank["rechecked"].all() else "; some candidates are not re-measured yet")
                  + f". Resume: run the same command again with `--study {result.study_name}`.", ""]
    reference = study.user_attrs.get("reference_speed") or {}
    lines += [
        f"- budget: **{settings.budget_ms:g} ms** per call (median) on the **{d.runtime}** runtime, "
        f"batch {d.batch_size}, {d.image_size}x{d.image_size}, {d.dtype}, device {d.device}, {d.threads} threads, "
        "at the machine's reference speed: every latency here is the measured one rescaled by the calibration "
        "workload timed between its blocks (`latency_norm_ms`; as measured: `latency_median_ms`; their ratio: "
        "`machine_speed`)"
        + (f"; reference: calibration {reference['calibration_ms']:.3f} ms per call, {reference['created_utc']} "
           f"(results/machines/{reference['fingerprint']}.json)" if reference else ""),
        f"- hardware: {machine_summary(env)}, "
        f"torch {env.get('torch_version', '?')}; fingerprint `{settings.deployment.fingerprint()}`",
        f"- objective: `{settings.objective}` (higher is better"
        + (f", averaged over {scoring.proxy_inits} initialisations" if settings.objective in ("synflow", "naswot")
           else "") + ")" + ("; two objectives (score up, latency down)" if settings.pareto else ""),
        f"- sampler: {settings.sampling.sampler}, seed {settings.sampling.seed}; "
        + (f"the first {n(trials['start'] == 'scaled')} trials are the scaled Container-Light members that fit "
           "(search.scaled, `start` in trials.csv)" if len(trials) and "start" in trials
           and (trials["start"] == "scaled").any() else "its start-up trials are its own proposals"),
        f"- winner: {_winner_rule(trials, settings)}",
        f"- trials: {len(trials)} ({n(complete)} complete, {n(fits)} feasible, {n(complete & ~fits)} over budget, "
        + (f"{n(trials['state'] == 'PRUNED')} pruned, " if settings.objective == ACCURACY and len(trials) else "")
        + f"{n(trials['state'] == 'FAIL') if len(trials) else 0} failed); {len(dropped)} dropped on re-measurement",
        f"- latency: measured with bench.profile on the {d.runtime} runtime (`runtime` in trials.csv), "
        f"stop rule {measuring.stop}, timed on while a candidate's interval contains the budget; cache hits this "
        f"run: {result.cache_hits}, "
        f"new measurements: {result.cache_misses}",
    ]
    data = settings.dataset()
    if settings.objective == ACCURACY and data is not None:
        adapted = adapt_config(settings.space.smallest(d.image_size), channels=data.channels, height=data.height,
                               width=data.width, num_classes=data.num_classes)
        patches = "/".join(str(s.patch_size) for s in adapted.stages)
        lines.append(f"- training: {data.describe()} (`{data.source}`), as {data.channels}x{adapted.image_size}x"
                     f"{adapted.image_size} inputs with patch sizes {patches} (the rule in search/scoring/training.py);"
                     f" every feasible candidate (never an over-budget one) trained "
                     f"for up to {scoring.training.describe(len(data.y_train))}, seed {settings.sampling.seed or 0}; "
                     f"validation accuracy reported to the `{scoring.pruner}` pruner after each epoch; "
                     f"{_training_seconds(trials):.1f} s of training in all (`train_s` in trials.csv)")
    if result.predictor_rejected is not None:
        rejected = int((trials["latency_source"] == "predicted").sum()) if "latency_source" in trials else 0
        lines.append(f"- latency predictor: {rejected} candidates predicted above "
                     f"{settings.predictor_threshold_ms:.4g} ms "
                     f"(budget + {measuring.predictor_margin:.0%}) were rejected without measuring (`latency_source` = "
                     f"`predicted` in trials.csv); every other candidate, and every ranked one, was measured for real")
    lines += [
        "- re-check: every ranked architecture"
        + ("" if recheck.recheck is None else f" among the top {recheck.recheck}")
        + f" is measured again and stays only if the mean of its two medians (at the reference speed) is <= "
        f"{settings.recheck_limit_ms:.4g} ms (budget - {recheck.recheck_margin:.0%} headroom)",
    ]
    if result.smallest_latency_ms is not None:
        lines.append(f"- smallest network in the space: {result.smallest_latency_ms:.2f} ms")
    lines.append("")
    if rank.empty:
        lines += ["## No feasible network", "",
                  f"No architecture measured under {settings.budget_ms:g} ms (and held there when measured again). "
                  "There is no ranking and no best.json.", ""]
    else:
        unique = rank[rank["duplicate_of"].isna()]
        best = unique.iloc[0]
        trained = (f" after {int(best['epochs_trained'])} epochs ({fixed(best['train_s'])} s of training)"
                   if settings.objective == ACCURACY and pd.notna(best.get("epochs_trained")) else "")
        lines += [f"## Winner: trial {int(best['trial'])}", "",
                  f"{'validation accuracy' if settings.objective == ACCURACY else settings.objective} "
                  f"{number(best['score'])}{trained}, {si(best['params'])} params, "
                  f"{si(best['flops'])} FLOPs, {fixed(best['latency_norm_ms'])} ms median on {d.runtime} at the "
                  f"machine's reference speed ({fixed(best['latency_median_ms'])} ms as measured; re-measured "
                  f"{fixed(best['recheck_norm_ms'])} ms).", "",
                  "`best.json` holds its config: `container.build(json.load(open('best.json')))`.", "",
                  "```json", json.dumps(result.best_config, indent=2), "```", "",
                  f"## Top {min(TOP_N, len(unique))} feasible architectures", "",
                  _markdown_table(unique.head(TOP_N), settings.objective, d.runtime), ""]
        if settings.pareto:
            front = unique[unique["pareto"].astype(bool)].sort_values("latency_norm_ms")
            lines += ["## Pareto front (score up, latency down)", "",
                      _markdown_table(front, settings.objective, d.runtime), ""]
        lines += [f"`ranking.csv` lists all {len(rank)} feasible trials ({len(unique)} distinct architectures) with "
                  "their configs as JSON.", ""]
    if len(dropped):
        table = pd.DataFrame({"trial": dropped["trial"].astype(int),
                              "first median (ms)": dropped["latency_norm_ms"].map(fixed),
                              "re-measured median (ms)": dropped["recheck_norm_ms"].map(fixed)})
        lines += ["## Dropped on re-measurement", "", markdown_table(table, align="rrr"), ""]
    lines += evidence(settings.objective)
    titles = {"score_vs_latency": "Score against latency", "history": "Best feasible score against trial number",
              "importances": "Parameter importances", "learning_curves": "Learning curves"}
    if plots:
        lines += ["## Plots", ""]
        for key, path in plots.items():
            lines += [f"### {titles.get(key, key)}", "", f"![{titles.get(key, key)}]({Path(path).name})", ""]
    return "\n".join(lines) + "\n"


def print_summary(result: SearchResult, objective: str, console: Console | None = None, top: int = 5) -> None:
    console = console or Console()
    rank = result.ranking
    if rank.empty:
        return
    unique = rank[rank["duplicate_of"].isna()].head(top)
    table = Table(title=f"{result.study_name}: best feasible under {result.budget_ms:g} ms on {result.runtime}")
    for name in ("#", "trial", objective, "params", "FLOPs", "ms", "measured", "again", "depth / width / kind"):
        table.add_column(name, justify="left" if name.startswith("depth") else "right",
                         no_wrap=not name.startswith("depth"))
    for _, r in unique.iterrows():
        table.add_row(str(int(r["rank"])), str(int(r["trial"])), number(r["score"]), si(r["params"]),
                      si(r["flops"]), fixed(r["latency_norm_ms"]), fixed(r["latency_median_ms"]),
                      fixed(r["recheck_norm_ms"]), as_config(r["config"]).describe_short())
    console.print(table)


__all__ = ["RANKING_COLUMNS", "evidence", "markdown", "pareto_mask", "print_summary", "ranking",
           "write_report"]
