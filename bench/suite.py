"""The suites behind `make bench`: which targets, at which batch sizes and settings, in which order."""
from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import container
from bench.env import environment, git_commit
from bench.kit import results_root, table_console, write_json, write_table
from bench.isolated import RssWorker
from bench.profiler import profile_variants
from bench.report import print_summary, write_report
from bench.result import SAMPLE_COLUMNS
from bench.roofline import Roofline, calibrate
from bench.targets import (STAGE_SHAPES, BenchInputError, BlockTarget, ModuleTarget, NetworkTarget, Target,
                           network_target)
from bench.timing import StopRule
from bench.workload import Options

# A suite's rows: every variant timed until its normalised median is known to +-2% (95% interval), for
# 0.3 s to 2.2 s of the group's rounds each (calibration and settling included), so that a run of the runtimes
# table costs at most 1.5x what it did before its figures were normalised and interleaved.
SUITE_STOP = StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.3, max_time_s=2.2, rel_interval=0.02)
QUICK_STOP = StopRule(rel_iqr=0.10, min_runs=3, min_time_s=0.05, max_time_s=0.5)
SWEEP_STAGE = 2  # the 320 @ 14x14 stage: every kind is cheap enough there to sweep the batch size
SWEEP_BATCHES = (1, 8)
QUICK_BATCH = 8
NETWORK_BATCHES = (1, 8)  # the runtimes suite's networks
DEFAULT_NETWORKS = ("container_light", "container")
SUITES = ("default", "runtimes")

# A network by registered name or config file path, a NetworkTarget, or a ModuleTarget (--model): run whole.
WholeModel = str | NetworkTarget | ModuleTarget


@dataclass(frozen=True)
class Job:
    target: Target
    batch_size: int
    options: Options
    group: str  # "stage", "batch-sweep", "network" or "module": how the report groups rows
    rss: bool = True


def block_jobs(kinds: Iterable[str], options: Options, stages: Iterable[int] = range(4),
               batch_sizes: dict[int, Iterable[int]] | None = None, batch: int | None = None) -> list[Job]:
    jobs = []
    for stage in stages:
        dim, side, stage_batch = STAGE_SHAPES[stage]
        stage_batch = batch or stage_batch
        for kind in kinds:
            target = BlockTarget(kind, dim, side)
            jobs.append(Job(target, stage_batch, options, "stage"))
            for sweep_batch in (batch_sizes or {}).get(stage, ()):
                if sweep_batch != stage_batch:
                    jobs.append(Job(target, sweep_batch, options, "batch-sweep", rss=False))
    return jobs


def network_jobs(networks: Iterable[WholeModel], options: Options, batch_sizes: Iterable[int] = (1,)) -> list[Job]:
    """Whole networks and modules, each at every batch size: names and config files become NetworkTargets."""
    jobs = []
    for network in networks:
        target = network_target(network) if isinstance(network, str) else network
        group = "module" if isinstance(target, ModuleTarget) else "network"
        jobs += [Job(target, batch, options, group) for batch in batch_sizes]
    return jobs


def whole_models(networks: Iterable[WholeModel] | None, models: Iterable[ModuleTarget],
                 quick: bool) -> list[WholeModel]:
    """The networks and modules a suite runs whole: those given, with DEFAULT_NETWORKS where `networks` is
    None (--quick: the first of them only, to stay sub-minute)."""
    if networks is None:
        networks = DEFAULT_NETWORKS[:1] if quick else DEFAULT_NETWORKS
    return [*networks, *models]


def default_jobs(options_list: Iterable[Options], kinds: Iterable[str] | None = None,
                 networks: Iterable[WholeModel] | None = None, quick: bool = False,
                 batch_sizes: Iterable[int] | None = None, models: Iterable[ModuleTarget] = ()) -> list[Job]:
    """`make bench`: every kind at the four stage shapes plus a batch sweep at the 320@14x14 stage, and the
    two networks; the networks and `models` at each of `batch_sizes` (default batch 1).

    --quick: every kind at the last stage shape only, and Container-Light (or the networks and models
    given) at batch 1 (at each of `batch_sizes` when given).
    """
    kinds = list(container.BLOCK_KINDS if kinds is None else kinds)
    wholes = whole_models(networks, models, quick)
    whole_batches = tuple(batch_sizes or (1,))
    jobs = []
    for options in options_list:
        if quick:
            jobs += block_jobs(kinds, options.replace(stop=QUICK_STOP), stages=[3], batch=QUICK_BATCH)
            jobs += network_jobs(wholes, options.replace(stop=QUICK_STOP), whole_batches)
            continue
        sweep = {SWEEP_STAGE: tuple(batch_sizes or SWEEP_BATCHES)}
        jobs += block_jobs(kinds, options, batch_sizes=sweep)
        jobs += network_jobs(wholes, options, whole_batches)
    return grouped_by_workload(jobs)


def runtime_jobs(options_list: Iterable[Options], kinds: Iterable[str] | None = None,
                 networks: Iterable[WholeModel] | None = None, quick: bool = False,
                 models: Iterable[ModuleTarget] = ()) -> list[Job]:
    """`make bench-runtimes`, each job once per Options (one per runtime): the networks (and `models`) at
    batch 1 and 8, every kind at the four stage shapes at batch 1, and the mix block at the four stage
    shapes at their stage batches (8/16/32/64).

    --quick: every kind at the last stage shape at batch 1, and the first network (or the networks and
    models given) at batch 1.
    """
    kinds = list(container.BLOCK_KINDS if kinds is None else kinds)
    wholes = whole_models(networks, models, quick)
    jobs = []
    for options in options_list:
        if quick:
            jobs += block_jobs(kinds, options.replace(stop=QUICK_STOP), stages=[3], batch=1)
            jobs += network_jobs(wholes, options.replace(stop=QUICK_STOP))
            continue
        jobs += network_jobs(wholes, options, batch_sizes=NETWORK_BATCHES)
        jobs += block_jobs(kinds, options, batch=1)
        if "mix" in kinds:
            jobs += block_jobs(["mix"], options)
    return grouped_by_workload(jobs)


def suite_jobs(suite: str, options_list: Iterable[Options], kinds: Iterable[str] | None = None,
               networks: Iterable[WholeModel] | None = None, quick: bool = False,
               batch_sizes: Iterable[int] | None = None, models: Iterable[ModuleTarget] = ()) -> list[Job]:
    """The jobs of a named suite (SUITES). None (kinds, networks) is the suite's default set, an empty
    list none. --batch-sizes is the default suite's: its block sweep and its networks' and models' batches."""
    if suite == "default":
        return default_jobs(options_list, kinds, networks, quick, batch_sizes, models)
    if suite == "runtimes":
        if batch_sizes is not None:
            raise BenchInputError("--batch-sizes: the runtimes suite has fixed batch sizes (the default suite's "
                                  "only)")
        return runtime_jobs(options_list, kinds, networks, quick, models)
    raise BenchInputError(f"--suite {suite!r}: valid suites: {', '.join(SUITES)}")


def grouped_by_workload(jobs: list[Job]) -> list[Job]:
    """The same jobs with every variant of one workload (runtime, dtype, device, ...) back to back.

    A VM's speed drifts by 10-30% over minutes; measured side by side, the variants a report
    divides (a runtime by the reference, bf16 by fp32) share the drift instead of absorbing it.
    """
    first: dict[tuple[str, int], int] = {}
    for i, job in enumerate(jobs):
        first.setdefault((job.target.name, job.batch_size), i)
    return sorted(jobs, key=lambda job: first[(job.target.name, job.batch_size)])


def workload_groups(jobs: list[Job]) -> list[list[Job]]:
    """The jobs in groups that bench.profile_variants measures together: the variants (runtime, dtype, layout,
    compile) of one target at one batch size, device, mode and thread count, in the jobs' order."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        o = job.options
        groups.setdefault((job.target.name, job.batch_size, o.device, o.mode, o.threads), []).append(job)
    return list(groups.values())


def _variant_name(options: Options) -> str:
    return " ".join([options.runtime, options.dtype] + ["cl"] * options.channels_last + ["compiled"] * options.compile)


def new_run_dir(root: str | Path | None = None) -> Path:
    """A fresh run directory, <root>/<time>-<commit>; root defaults to the results root's runs/."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(results_root() / "runs" if root is None else root) / f"{stamp}-{git_commit()}"


def run_suite(jobs: list[Job], out_dir: str | Path, *, rss: bool = True, console: Console | None = None,
              progress: bool = True, calibration_stop: StopRule | None = None,
              before: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measure every job and write results.csv / results.json after each one, then the report (with an
    earlier run's rows as `before`, its goal table shows fast's ratios there beside this run's).

    Each row gets the environment's columns (machine, commit, time), taken once per device and
    thread count in the run: bench.profile leaves them out, so a search trial does not pay for them.
    """
    console = console or table_console()
    out_dir = Path(out_dir)
    rooflines: dict[tuple[str, str], Roofline] = {}
    environments: dict[tuple[str, int], dict[str, object]] = {}

    def environment_of(device: str, threads: int) -> dict[str, object]:
        if (device, threads) not in environments:
            environments[device, threads] = environment(device, threads)
        return environments[device, threads]

    rows: list[dict] = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar, \
            (RssWorker() if rss else contextlib.nullcontext()) as worker:
        task = bar.add_task("calibrating roofline", total=len(jobs))
        for group in workload_groups(jobs):
            for job in group:
                key = (job.options.device, job.options.dtype)
                if key not in rooflines:
                    bar.update(task, description=f"calibrating {key[0]} {key[1]} roofline")
                    rooflines[key] = calibrate(*key, threads=job.options.threads,
                                               **({"stop": calibration_stop} if calibration_stop else {}))
            first = group[0]
            bar.update(task, description=f"{first.target.name} b{first.batch_size} {first.options.device}: "
                                         f"{', '.join(_variant_name(job.options) for job in group)}")
            results = profile_variants(first.target, first.batch_size, [job.options for job in group],
                                       rooflines=[rooflines[job.options.device, job.options.dtype] for job in group],
                                       rss_worker=worker if rss else None, rss=[job.rss for job in group])
            for job, result in zip(group, results):
                rows.append(result.row() | environment_of(result.options.device, result.threads)
                            | {"group": job.group})
            _write_rows(rows, out_dir)
            bar.advance(task, len(group))
        bar.update(task, description="done")
    frame = _write_rows(rows, out_dir)
    threads = (jobs[0].options.threads if jobs else None) or torch.get_num_threads()
    write_json(out_dir / "environment.json",
               environment_of("cpu", threads) | {"rooflines": [vars(r) for r in rooflines.values()]})
    write_report(frame, out_dir, list(rooflines.values()), before)
    print_summary(frame, console)
    console.print(f"results: [bold]{out_dir}[/] (results.csv, results.json, report.md)")
    return frame


def _write_rows(rows: list[dict], out_dir: Path) -> pd.DataFrame:
    """results.csv / results.json without the per-block samples, which go to latency_samples.json; the frame
    returned keeps them (the report's intervals of ratios are computed from the rounds)."""
    frame = pd.DataFrame(rows)
    samples = [c for c in SAMPLE_COLUMNS if c in frame]
    write_table(frame.drop(columns=samples), out_dir / "results.csv", out_dir / "results.json")
    if samples:
        write_json(out_dir / "latency_samples.json",
                   [{"name": r["name"], "batch_size": r["batch_size"], "device": r["device"], "dtype": r["dtype"],
                     "runtime": r.get("runtime"), **{c.removeprefix("latency_"): r.get(c, []) for c in samples}}
                    for r in rows])
    return frame


def resolve_devices(spec: str) -> list[str]:
    """"auto": the CPU, and CUDA as well when a GPU is present; otherwise a comma-separated list."""
    if spec == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [d.strip() for d in spec.split(",") if d.strip()]
