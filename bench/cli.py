"""Argument parsing for `python -m bench`; every command calls the library and returns an exit code."""
from __future__ import annotations

import argparse
import itertools
import sys

from rich.console import Console

import container
from bench.targets import BenchInputError

COMMANDS = ("run", "affinity", "regress", "history")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="sub-minute smoke run: every kind at the 512@7x7 stage (batch 8), "
                   "Container-Light at batch 1, short timing, no isolated-process RSS")
    p.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present) or a list: cpu,cuda")
    p.add_argument("--dtype", type=_csv, default=["fp32"], help="fp32, bf16, fp16 (autocast); a list runs each")
    p.add_argument("--channels-last", choices=("off", "on", "both"), default="off", help="memory layout")
    p.add_argument("--compile", action="store_true", help="torch.compile the module (compile time reported apart)")
    p.add_argument("--mode", choices=("inference", "train"), default="inference",
                   help="train: forward, backward and an optimizer step")
    p.add_argument("--impl", type=_csv, default=["reference"],
                   help="reference (faithful eager), fast (container.optimize), or both: reference,fast")
    p.add_argument("--kinds", type=_csv, default=None, help=f"block kinds (default all: {','.join(container.BLOCK_KINDS)})")
    p.add_argument("--networks", type=_csv, default=None,
                   help=f"networks (default container_light,container; valid: {','.join(container.list_models())})")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="batch sweep at the 320@14x14 stage (default 1,8)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--no-rss", action="store_true", help="skip the isolated-process peak RSS")
    p.add_argument("--out", default=None, help="run directory (default results/runs/<time>-<commit>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from bench.suite import QUICK_STOP, default_jobs, new_run_dir, resolve_devices, run_suite
    from bench.workload import Options

    for kind in args.kinds or []:
        if kind not in container.BLOCK_KINDS:
            raise BenchInputError(f"--kinds {kind!r}: unknown block kind; valid kinds: {', '.join(container.BLOCK_KINDS)}")
    for name in args.networks or []:
        if name not in container.list_models():
            raise BenchInputError(f"--networks {name!r}: unknown network; valid networks: "
                                  f"{', '.join(container.list_models())}")
    layouts = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    options = [Options(device=device, dtype=dtype, channels_last=cl, compile=args.compile, mode=args.mode,
                       impl=impl, threads=args.threads)
               for device, dtype, cl, impl in itertools.product(resolve_devices(args.device), args.dtype, layouts,
                                                                args.impl)]
    for o in options:
        o.validate()
    jobs = default_jobs(options, kinds=args.kinds, networks=args.networks, quick=args.quick,
                        batch_sizes=args.batch_sizes)
    run_suite(jobs, args.out or new_run_dir(), rss=not (args.no_rss or args.quick), progress=not args.no_progress,
              calibration_stop=QUICK_STOP if args.quick else None)
    return 0


def configure_affinity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", default="mix", help=f"block kind: {', '.join(container.BLOCK_KINDS)}")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--side", type=int, default=14, help="tokens per side")
    p.add_argument("--heads", type=int, default=None, help="default dim // 32")
    p.add_argument("--kernel-size", type=int, default=5)
    p.add_argument("--network", default=None, help="take the block from a network: a name or a config .json")
    p.add_argument("--block", default=None, help="the block inside --network, e.g. blocks4.0 (default: last stage's first)")
    p.add_argument("--weights", default=None, help="a state_dict file for the block (or for --network)")
    p.add_argument("--query", default=None, help="query token as ROW,COL (default: the centre)")
    p.add_argument("--max-heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/affinity.png")


def affinity(args: argparse.Namespace) -> int:
    from bench.affinity import block_and_input, draw_affinity

    query = None
    if args.query:
        try:
            query = tuple(int(v) for v in args.query.split(","))
            assert len(query) == 2
        except (ValueError, AssertionError):
            raise BenchInputError(f"--query {args.query!r}: expected ROW,COL") from None
    try:
        block, x = block_and_input(args.kind, args.dim, args.side, args.heads, args.kernel_size, args.network,
                                   args.block, args.weights, args.seed)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise BenchInputError(str(e).splitlines()[0]) from None
    path = draw_affinity(block, x, args.out, query, args.max_heads)
    Console().print(f"affinity figure: [bold]{path}[/]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from bench import history, regress

    parser = argparse.ArgumentParser(prog="python -m bench", description=(
        "Profile Container blocks and networks: FLOPs, memory, latency, throughput, roofline. "
        "With no command, runs the default suite (`run`)."))
    sub = parser.add_subparsers(dest="command")
    for name, configure, main, text in (
            ("run", configure_run, run, "run a profiling suite (the default)"),
            ("affinity", configure_affinity, affinity, "draw a block's affinity matrices"),
            ("regress", regress.configure_parser, regress.main, "the throughput regression gate"),
            ("history", history.configure_parser, history.main, "plot regression-gate history over commits")):
        p = sub.add_parser(name, help=text, description=text)
        configure(p)
        p.set_defaults(func=main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the rows measured so far are in the run directory", file=sys.stderr)
        return 130
