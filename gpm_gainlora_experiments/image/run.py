"""Run every (strategy, seed) pair of a benchmark, then write the report.

``gpm-gainlora-run`` with no arguments runs the CPU demo: GPM, Naive and EWC on
Permuted Digits with seed 0, into ``results/permuted_digits``. Runs whose record exists are
skipped, so an interrupted sweep resumes when the same command is run again.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from avalanche_gpm.distributed import DistributedHelper, shutdown_distributed
from gpm_gainlora_experiments.image.benchmarks import BENCHMARKS
from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.common.cli_types import comma_list, random_seed
from gpm_gainlora_experiments.image.cli import add_run_arguments, run_keywords, strategy_name
from gpm_gainlora_experiments.image.report import write_report
from gpm_gainlora_experiments.image.runner import run
from gpm_gainlora_experiments.image.strategies import STRATEGIES

DEMO_STRATEGIES = "gpm,naive,ewc"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="gpm-gainlora-run", description=__doc__.split("\n\n")[0])
    benchmarks = "; ".join(f"{name}: {spec.description}" for name, spec in sorted(BENCHMARKS.items()))
    parser.add_argument(
        "--benchmark",
        default="permuted_digits",
        choices=sorted(BENCHMARKS),
        help=f"(default permuted_digits) {benchmarks}",
    )
    parser.add_argument(
        "--strategies",
        type=comma_list(strategy_name),
        default=DEMO_STRATEGIES.split(","),
        help=f"comma-separated, from: {', '.join(sorted(STRATEGIES))} (default {DEMO_STRATEGIES})",
    )
    parser.add_argument(
        "--seeds", type=comma_list(random_seed), nargs="+", default=[[0]], help="seeds, e.g. '0 1 2' or 0,1,2 (default 0)"
    )
    parser.add_argument("--out", help="output folder (default results/<benchmark>)")
    add_run_arguments(parser)
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="train with torch DDP over the processes of a torchrun launch (the global batch is split "
        "over them; naive, gpm, sgp, replay), e.g. torchrun --nproc_per_node=2 -m gpm_gainlora_experiments.image.run --distributed ...",
    )
    args = parser.parse_args(argv)
    args.seeds = [seed for group in args.seeds for seed in group]
    if not args.strategies or not args.seeds:
        parser.error("--strategies and --seeds need at least one value")
    args.out = args.out or f"results/{args.benchmark}"
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sweep and print its summary.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    if args.distributed:
        cuda = args.device.startswith("cuda")
        if not DistributedHelper.init_distributed(args.seeds[0], backend="nccl" if cuda else "gloo", use_cuda=cuda):
            raise SystemExit("--distributed needs a torchrun launch (LOCAL_RANK is not set)")
    keywords = run_keywords(args)
    with exit_on_user_error():
        for seed in args.seeds:
            for strategy in args.strategies:
                run(args.benchmark, strategy, seed, args.out, **keywords)
        if DistributedHelper.is_main_process:
            print(write_report(args.out))
            print(f"Records, summary.md, summary.csv and figures are in {args.out}")
    shutdown_distributed()


if __name__ == "__main__":
    main()
