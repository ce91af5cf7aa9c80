"""`python -m bench` (console script `container-bench`): every command calls the library and returns an exit code.

With no command, or with `run`, it runs a profiling suite; its options are the top-level ones, so
`python -m bench --help` lists them. The other commands have their own --help.
Exit status: 0 done; 1 the regression gate found a slowdown, or `export` wrote an artifact that does not match
the reference (or could not convert one); 2 bad input (one line on stderr); 130 interrupted.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from rich.console import Console

import container
from bench import regress
from bench.regress import history
from bench.affinity import block_and_input, draw_affinity
from bench.export import ARTIFACTS, check_export_runtime, export_artifacts, exporting_runtimes
from bench.fast_goal import earlier_run
from bench.kit import (EXIT_BAD_INPUT, Parser, argument_type, choice_list, comma_list, fail, names, non_negative_int,
                       positive_int, positive_ints, program_name, results_root, writable_dir, writable_file)
from bench.machine import reference_path, reference_speed, speed_now
from bench.ops.report import OpJob, run_ops
from bench.repeat import check_repeat, repeat_check
from bench.runtimes import RUNTIMES
from bench.suite import QUICK_STOP, SUITE_STOP, SUITES, Job, new_run_dir, resolve_devices, run_suite, suite_jobs
from bench.targets import STAGE_SHAPES, BenchInputError, BlockTarget, ModuleTarget, network_target, parse_shape
from bench.workload import Options

EXIT_INTERRUPTED = 130


def add_dtypes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", type=names, default=["fp32"], help="fp32, bf16, fp16 (autocast); a list runs each")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")


def add_targets(p: argparse.ArgumentParser, *, kinds_help: str, batch_sizes_help: str, model_note: str = "") -> None:
    """What to measure (or export): --kinds, --networks, --model with --input-shape, --batch-sizes. The
    targets they name: stage_blocks(args.kinds), args.networks and _models(args.model, args.input_shape)."""
    p.add_argument("--kinds", type=choice_list(container.BLOCK_KINDS, "kind"), default=None, help=kinds_help)
    p.add_argument("--networks", type=comma_list(argument_type(network_target)), default=None,
                   help=f"networks, a list: registered names ({','.join(container.list_models())}) or config files "
                        f"(JSON or YAML NetworkConfig fields, e.g. the search's best.json); named by the name or "
                        f"the path as given")
    p.add_argument("--model", action="extend", type=names, default=None, metavar="SPEC",
                   help=f"your own nn.Module: package.module:callable, called with no arguments (the working "
                        f"directory is importable); repeat the flag or give a list for several. Needs --input-shape. "
                        f"{model_note}".strip())
    p.add_argument("--input-shape", type=argument_type(parse_shape), default=None, metavar="C,H,W",
                   help="one sample's shape for --model (the batch size is added in front), e.g. 3,224,224")
    p.add_argument("--batch-sizes", type=positive_ints, default=None, help=batch_sizes_help)


def stage_blocks(kinds: Sequence[str] | None) -> list[BlockTarget]:
    """Each block kind at the four Container stage shapes."""
    return [BlockTarget(kind, dim, side) for kind in kinds or [] for dim, side, _ in STAGE_SHAPES]


def configure_run(p: argparse.ArgumentParser, out_help: str | None = None) -> None:
    p.add_argument("--suite", choices=SUITES, default="default",
                   help="default: every kind at the four stage shapes plus a batch sweep, and the networks at "
                        "batch 1 (each of --batch-sizes when given); runtimes: the runtime table (make "
                        "bench-runtimes): the networks at batch 1 and 8, every kind at the stage shapes at batch 1, "
                        "the mix block at its stage batches")
    p.add_argument("--quick", action="store_true",
                   help="sub-minute smoke run: every kind at the 512@7x7 stage (batch 8; 1 with --suite runtimes), "
                        "Container-Light (or the networks and models named) at batch 1, short timing, no "
                        "isolated-process RSS")
    p.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present) or a list: cpu,cuda")
    add_dtypes(p)
    p.add_argument("--channels-last", choices=("off", "on", "both"), default="off", help="memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the module (compile time reported apart)")
    p.add_argument("--mode", choices=("inference", "train"), default="inference",
                   help="train: forward, backward and an optimizer step")
    p.add_argument("--runtime", "--impl", dest="runtime", type=names, default=None,
                   help="what runs the modules, a list runs each: reference (the faithful eager modules), fast "
                        "(container.optimize), onnxruntime, openvino, aot (an AOTInductor package) (default: "
                        "reference; every runtime with --suite runtimes). --impl is an alias")
    add_targets(p, kinds_help=f"block kinds: {','.join(container.BLOCK_KINDS)}. Naming targets selects them: with "
                              f"any of --kinds, --networks, --model only those named run; with none, the suite's "
                              f"(every kind, container_light and container)",
                batch_sizes_help="the default suite's batch sizes: the sweep at the 320@14x14 stage (default 1,8) and "
                                 "the networks' and models' batches (default 1)",
                model_note="Rows are named by the spec; --runtime fast takes Container blocks and networks only "
                           "(export_failed otherwise)")
    add_threads(p)
    p.add_argument("--no-rss", action="store_true", help="skip the isolated-process peak RSS")
    p.add_argument("--out", type=writable_dir, default=None,
                   help=out_help or f"run directory (default {results_root() / 'runs'}/<time>-<commit>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--before", type=argument_type(earlier_run), default=None, metavar="RUN",
                   help="an earlier run (its directory or results.csv): the report's fast-against-best table "
                        "shows its ratios beside this run's")


def run_jobs(args: argparse.Namespace) -> list[Job]:
    """The jobs that `run`'s options (configure_run) describe: `run` and `repeat` measure these."""
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    runtimes = args.runtime or (list(RUNTIMES) if args.suite == "runtimes" else ["reference"])
    options = [Options(device=device, dtype=dtype, channels_last=cl, compile=args.compile, mode=args.mode,
                       runtime=runtime, threads=args.threads, stop=SUITE_STOP)
               for device, dtype, cl, runtime in itertools.product(resolve_devices(args.device), args.dtype, layouts,
                                                                   dict.fromkeys(runtimes))]
    for o in options:
        o.validate()
    models = _models(args.model, args.input_shape)
    kinds, networks = args.kinds, args.networks
    if any(named is not None for named in (kinds, networks, args.model)):
        kinds, networks = kinds or [], networks or []
    return suite_jobs(args.suite, options, kinds=kinds, networks=networks, quick=args.quick,
                      batch_sizes=args.batch_sizes, models=models)


def run_settings(args: argparse.Namespace) -> dict:
    """run_suite's options from `run`'s command line."""
    return dict(rss=not (args.no_rss or args.quick), progress=not args.no_progress,
                calibration_stop=QUICK_STOP if args.quick else None, before=args.before)


def run(args: argparse.Namespace) -> int:
    run_suite(run_jobs(args), args.out or new_run_dir(), **run_settings(args))
    return 0


def configure_repeat(p: argparse.ArgumentParser) -> None:
    configure_run(p, out_help=f"directory of run-1/, run-2/, ... and the repeat report "
                              f"(default {results_root() / 'repeat'}/<time>-<commit>)")
    p.add_argument("--times", type=int, default=2, help="how many runs, >= 2")
    p.add_argument("--pause-s", type=float, default=10.0, help="seconds between runs, >= 0")


def repeat(args: argparse.Namespace) -> int:
    check_repeat(args.times, args.pause_s)
    repeat_check(run_jobs(args), args.out or new_run_dir(results_root() / "repeat"), args.times, args.pause_s,
                 command=getattr(args, "command_line", ""), **run_settings(args))
    return 0


def _models(specs: list[str] | None, input_shape: tuple[int, ...] | None) -> list[ModuleTarget]:
    if specs is None:
        if input_shape is not None:
            raise BenchInputError("--input-shape: applies to --model only (one sample's shape of your module)")
        return []
    if input_shape is None:
        raise BenchInputError("--model: needs --input-shape C,H,W, one sample's shape, e.g. 3,224,224")
    try:
        return [ModuleTarget.from_callable(spec, input_shape) for spec in dict.fromkeys(specs)]
    except BenchInputError as e:
        raise BenchInputError(f"--model {e}") from None


def _query(text: str) -> tuple[int, int]:
    """A token position ROW,COL."""
    try:
        row, col = (non_negative_int(v) for v in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROW,COL (two integers >= 0)") from None
    return row, col


def configure_affinity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default="mix", choices=container.BLOCK_KINDS, help="block kind")
    p.add_argument("--dim", type=positive_int, default=64, help="channels")
    p.add_argument("--side", type=positive_int, default=14, help="tokens per side")
    p.add_argument("--heads", type=positive_int, default=None, help="default dim // 32")
    p.add_argument("--kernel-size", type=positive_int, default=5, help="window of the static affinity")
    p.add_argument("--network", default=None, help="take the block from a network: a name or a config .json")
    p.add_argument("--block", default=None,
                   help="the block inside --network, e.g. blocks4.0 (default: last stage's first)")
    p.add_argument("--weights", default=None, help="a state_dict file for the block (or for --network)")
    p.add_argument("--query", type=_query, default=None, help="query token as ROW,COL (default: the centre)")
    p.add_argument("--max-heads", type=positive_int, default=4, help="heads drawn")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and input")
    p.add_argument("--out", type=writable_file, default=results_root() / "affinity.png", help="figure file")


def affinity(args: argparse.Namespace) -> int:
    try:
        block, x = block_and_input(args.kind, args.dim, args.side, args.heads, args.kernel_size, args.network,
                                   args.block, args.weights, args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise BenchInputError(str(e).splitlines()[0]) from None
    path = draw_affinity(block, x, args.out, args.query, args.max_heads)
    Console().print(f"affinity figure: [bold]{path}[/]")
    return 0


def configure_ops(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kinds", type=choice_list(container.BLOCK_KINDS, "kind"), default=None,
                   help=f"block kinds ({','.join(container.BLOCK_KINDS)}), each at the four stage shapes "
                        f"({', '.join(f'{d}@{s}x{s}' for d, s, _ in STAGE_SHAPES)})")
    p.add_argument("--networks", type=comma_list(argument_type(network_target)), default=None,
                   help="networks: registered names or config files (default: container_light when no --kinds)")
    p.add_argument("--batch-sizes", type=positive_ints, default=[1], help="batch sizes of every target")
    p.add_argument("--runtime", type=names, default=["fast", "onnxruntime", "openvino"],
                   help=f"runtimes to profile, a list: {', '.join(RUNTIMES)}")
    add_threads(p)
    p.add_argument("--dtype", default="fp32", help="fp32, or bf16 / fp16 through autocast (onnxruntime: fp32 only)")
    p.add_argument("--runs", type=positive_int, default=20, help="profiled calls per runtime, after a warm-up")
    p.add_argument("--top", type=positive_int, default=12, help="ops listed per runtime in report.md")
    p.add_argument("--out", type=writable_dir, default=None,
                   help=f"output directory (default {results_root() / 'ops'})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def ops(args: argparse.Namespace) -> int:
    options = [Options(runtime=runtime, threads=args.threads, dtype=args.dtype)
               for runtime in dict.fromkeys(args.runtime)]
    for o in options:
        o.validate()
    targets = stage_blocks(args.kinds)
    targets += args.networks or ([] if args.kinds else [network_target("container_light")])
    jobs = [OpJob(target, batch, o) for target in targets for batch in args.batch_sizes for o in options]
    out = args.out or results_root() / "ops"
    run_ops(jobs, out, args.runs, args.top, progress=not args.no_progress)
    Console().print(f"ops: [bold]{out}[/] (ops.csv, categories.csv, gaps.csv, report.md, ops.png)")
    return 0


def configure_machine(p: argparse.ArgumentParser) -> None:
    add_threads(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--refresh", action="store_true",
                   help="measure the reference speed again and store it (run it with nothing else busy)")


def machine(args: argparse.Namespace) -> int:
    """This machine's stored reference speed (made now on first use, or with --refresh), and its speed now."""
    options = Options(device=args.device, threads=args.threads)
    options.validate()
    threads = args.threads or torch.get_num_threads()
    reference = reference_speed(args.device, threads, refresh=args.refresh)
    speed = speed_now(reference)
    console = Console()
    console.print(f"machine {reference.fingerprint}: {reference.machine}, {reference.device}, {threads} thread(s)\n"
                  f"reference speed: calibration workload {reference.calibration_ms:.3f} ms per call, measured "
                  f"{reference.created_utc} ({reference.method})\n"
                  f"stored in {reference_path(args.device, threads)}\n"
                  f"now: machine speed {speed:.3f} of the reference (latency_norm_ms = latency_median_ms x machine "
                  f"speed)", highlight=False)
    return 0


def configure_export(p: argparse.ArgumentParser) -> None:
    files = "; ".join(f"{runtime}: {' + '.join(ARTIFACTS[runtime])}" for runtime in exporting_runtimes())
    p.add_argument("--runtime", type=names, required=True,
                   help=f"the runtimes whose artifact to write, a list ({files})")
    add_dtypes(p)
    add_targets(p, kinds_help=f"block kinds ({','.join(container.BLOCK_KINDS)}), each at the four stage shapes "
                              f"({', '.join(f'{d}@{s}x{s}' for d, s, _ in STAGE_SHAPES)}). With none of --kinds, "
                              f"--networks, --model: container_light",
                batch_sizes_help="batch sizes of every target (default 1)")
    add_threads(p)
    p.add_argument("--quick", action="store_true", help="short timing of each artifact (a run's --quick timing)")
    p.add_argument("--out", type=writable_dir, default=None,
                   help=f"output directory: <target>-b<batch>-<dtype>/<runtime>/ in it (default "
                        f"{results_root() / 'export'})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def export(args: argparse.Namespace) -> int:
    """The artifact of every target, batch size, dtype and runtime, with its manifest; 1 where one is not ok."""
    for runtime in args.runtime:
        check_export_runtime(runtime)  # before anything is built: --runtime reference is refused in one line
    stop = QUICK_STOP if args.quick else SUITE_STOP
    variants = [Options(runtime=runtime, dtype=dtype, threads=args.threads, stop=stop)
                for dtype in dict.fromkeys(args.dtype) for runtime in dict.fromkeys(args.runtime)]
    for o in variants:
        o.validate()
    targets = [*stage_blocks(args.kinds), *(args.networks or []), *_models(args.model, args.input_shape)]
    out = args.out or results_root() / "export"
    artifacts = export_artifacts(targets or [network_target("container_light")], args.batch_sizes or [1], variants,
                                 out, progress=not args.no_progress, command=getattr(args, "command_line", ""))
    return 0 if all(a.ok for a in artifacts) else 1


@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int]
    summary: str


COMMANDS = {
    "run": Command(configure_run, run, "run a profiling suite (the default; its options are the top-level ones)"),
    "affinity": Command(configure_affinity, affinity, "draw a block's affinity matrices"),
    "ops": Command(configure_ops, ops, "where the time goes: op-by-op profiles per runtime, by category"),
    "regress": Command(regress.configure_parser, regress.main, "the throughput regression gate"),
    "history": Command(history.configure_parser, history.main, "plot regression-gate history over commits"),
    "machine": Command(configure_machine, machine, "this machine's reference speed (what latency_norm_ms is "
                                                   "normalised to); --refresh measures it again"),
    "repeat": Command(configure_repeat, repeat, "run the same measurement N times and report how well the runs agree"),
    "export": Command(configure_export, export, "write the deployable artifact a runtime runs (model.onnx, OpenVINO "
                                                "IR, model.pt2), timed and checked, with a manifest"),
}


def build_parser(command: str = "run") -> argparse.ArgumentParser:
    """The parser of one command; `run`'s is the top-level one and lists the others."""
    prog = program_name("bench")
    if command == "run":
        others = "".join(f"\n  {name:<10}{c.summary}" for name, c in COMMANDS.items() if name != "run")
        parser = Parser(prog=prog, description=(
            "Profile Container blocks and networks: FLOPs, memory, latency, throughput, roofline.\n"
            "With no command (or `run`), runs a profiling suite with the options below."),
            epilog=f"other commands (each has its own --help: {prog} COMMAND --help):{others}")
    else:
        parser = Parser(prog=f"{prog} {command}", description=COMMANDS[command].summary)
    COMMANDS[command].configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_line = f"{program_name('bench')} {shlex.join(argv)}".strip()
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    args = build_parser(command).parse_args(argv)
    args.command_line = command_line
    try:
        return COMMANDS[command].main(args)
    except BenchInputError as e:
        return fail("bench", str(e), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted: what was measured so far is in the output directory", file=sys.stderr)
        return EXIT_INTERRUPTED
