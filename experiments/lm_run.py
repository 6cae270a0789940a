"""Run LoRA continual-learning methods on an instruction-tuning task order, then write the report.

Example (the CPU protocol, i.e. every default spelled out)::

    python -m experiments.lm_run --benchmark superni --order 1 --data-root ../shared/data \\
        --out results/lm/superni_order1 --model smollm2-135m-instruct --seeds 0

Every (method, seed) pair is one JSON record in ``--out``; a pair whose record exists with the
same configuration is skipped, so an interrupted sweep resumes when the same command is run
again (``--force`` reruns). The model is loaded once and copied for each run.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from avalanche_gainlora.distributed import DistributedHelper, setup_distributed, shutdown_distributed
from experiments.instruction import load_tasks, resolve_order
from experiments.lm_methods import METHODS, MethodOptions, parse_methods
from experiments.lm_models import ALIASES, CachedModelLoader
from experiments.lm_report import write_lm_report
from experiments.lm_runner import LMSettings, run_lm
from experiments.cli_errors import exit_on_user_error
from experiments.cli_types import comma_list, positive_float, positive_int

#: Preset order of each benchmark when neither --order nor --tasks is given.
DEFAULT_ORDER = {"superni": 1, "long_sequence": 3}

#: LoRA rank of the reference scripts by benchmark.
DEFAULT_RANK = {"superni": 4, "long_sequence": 8}

#: The CPU protocol: the five methods on the first four tasks of one order in about an hour on two
#: CPU cores with SmolLM2-135M (measured: a training step of 8 x ~150 tokens ~13-16 s, a generated
#: batch of 16 x 24 tokens ~16 s, InfLoRA's statistics ~1.7 s per sample, all on one thread).
CPU_PROTOCOL: dict[str, Any] = {
    "num_tasks": 4,
    "max_train": 64,
    "max_test": 16,
    "epochs": 1,
    "batch_size": 8,
    "eval_batch_size": 16,
    "lr": 1e-3,
    "max_prompt_tokens": 128,
    "max_answer_tokens": 24,
    "max_new_tokens": 24,
    "inflora_max_samples": 16,
}

_PROTOCOL_HELP = (
    "Defaults are a CPU protocol (about an hour for the five methods on 2 cores with SmolLM2-135M): "
    f"{CPU_PROTOCOL['num_tasks']} tasks, {CPU_PROTOCOL['max_train']} training and {CPU_PROTOCOL['max_test']} "
    f"test examples per task, {CPU_PROTOCOL['epochs']} epoch, batch {CPU_PROTOCOL['batch_size']}, "
    f"lr {CPU_PROTOCOL['lr']} (constant, AdamW without weight decay), prompts cut to "
    f"{CPU_PROTOCOL['max_prompt_tokens']} tokens, answers to {CPU_PROTOCOL['max_answer_tokens']}, "
    f"{CPU_PROTOCOL['max_new_tokens']} generated tokens, InfLoRA statistics from "
    f"{CPU_PROTOCOL['inflora_max_samples']} samples per task; the seen tasks are evaluated after each task. "
    "On a CPU shared with other jobs set OMP_NUM_THREADS=1 (oversubscribed threads slow generation "
    "down many times). The paper's protocol (T5-Large) is all 15 tasks, all examples, 100 (SuperNI) / 10 "
    "(Long Sequence) epochs, batch 32, lr 3e-4, prompts of up to 512 tokens, answers and generations of up "
    "to 50 (the official scripts): pass --num-tasks 15 --max-train 0 --max-test 0 --epochs 100 --batch-size 32 "
    "--lr 3e-4 --max-prompt-tokens 512 --max-answer-tokens 50 --max-new-tokens 50 --inflora-max-samples 0 on a GPU."
)


def _cap(text: str) -> int | None:
    """A per-task example cap; 0 means no cap."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: no cap), got {value}")
    return value or None


def _carve(text: str) -> float | int:
    """A fraction in (0, 1) (float) or a count >= 1 (int); checked by ``load_tasks``."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _methods(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _protocol_option(group: argparse._ArgumentGroup, flag: str, kind: Any, text: str) -> None:
    """An option whose default comes from :data:`CPU_PROTOCOL` (key: the flag's name)."""
    default = CPU_PROTOCOL[flag.removeprefix("--").replace("-", "_")]
    group.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (its help documents the CPU protocol)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.lm_run", description=__doc__.split("\n\n")[0] + " " + _PROTOCOL_HELP
    )
    data = parser.add_argument_group("tasks and data")
    data.add_argument("--benchmark", default="superni", choices=sorted(DEFAULT_ORDER), help="(default superni)")
    which = data.add_mutually_exclusive_group()
    which.add_argument("--order", type=int, help="preset order (1, 2: SuperNI; 3, 4: Long Sequence); default 1 / 3")
    which.add_argument("--tasks", type=comma_list(str), help="custom order: comma-separated task names")
    _protocol_option(data, "--num-tasks", positive_int, "train on the first N tasks of the order")
    data.add_argument("--data-root", required=True, help="folder containing CL_Benchmark/, e.g. ../shared/data")
    _protocol_option(data, "--max-train", _cap, "training examples per task, 0: all")
    _protocol_option(data, "--max-test", _cap, "test examples per task, 0: all")
    data.add_argument(
        "--data-seed", type=int, default=0, help="seed of the task subsets, the same for all runs (default 0)"
    )
    data.add_argument(
        "--carve-test-from-train",
        type=_carve,
        help="for tasks without test.json: hold out this fraction (e.g. 0.1) or count (e.g. 100) of train.json",
    )

    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--methods",
        type=_methods,
        default=list(METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (default all)",
    )
    runs.add_argument("--seeds", type=comma_list(int), nargs="+", default=[[0]], help="'0 1 2' or 0,1,2 (default 0)")
    runs.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help=f"Hugging Face name or folder, or an offline alias: {', '.join(ALIASES)} (default; `make lm-setup`)",
    )
    runs.add_argument("--out", help="output folder (default results/lm/<benchmark>_order<N> or <benchmark>_custom)")
    runs.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    runs.add_argument("--force", action="store_true", help="rerun and overwrite existing records")
    runs.add_argument("--verbose", action="store_true", help="Avalanche's per-epoch progress and metrics too")
    runs.add_argument(
        "--distributed",
        action="store_true",
        help="train with DDP over the processes of a torchrun launch (the global batch is split over them, "
        "the test prompts too), e.g. torchrun --nproc_per_node=2 -m experiments.lm_run --distributed ...",
    )

    train = parser.add_argument_group("training and evaluation")
    _protocol_option(train, "--epochs", positive_int, "epochs per task")
    _protocol_option(train, "--batch-size", positive_int, "training mini-batch size")
    _protocol_option(train, "--eval-batch-size", positive_int, "prompts per generation batch")
    _protocol_option(train, "--lr", positive_float, "constant AdamW learning rate")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    train.add_argument("--rank", type=positive_int, help="LoRA rank (default 4 SuperNI, 8 Long Sequence)")
    train.add_argument("--alpha", type=positive_float, default=32.0, help="LoRA alpha (default 32)")
    train.add_argument(
        "--target-modules", type=comma_list(str), help="adapted layers (default peft's for the model: q and v; GPT-2 its fused q/k/v c_attn)"
    )
    _protocol_option(train, "--max-prompt-tokens", positive_int, "prompts keep their last tokens")
    _protocol_option(train, "--max-answer-tokens", positive_int, "training answers are cut to this, eos included")
    _protocol_option(train, "--max-new-tokens", positive_int, "most generated tokens per answer")
    train.add_argument(
        "--eval-all-tasks", action="store_true", help="also evaluate tasks not trained yet (full T x T matrices)"
    )

    methods = parser.add_argument_group("method options")
    methods.add_argument("--lambda1", type=float, default=0.5, help="O-LoRA orthogonality weight (default 0.5)")
    methods.add_argument(
        "--threshold", type=float, help="energy threshold of InfLoRA / GainLoRA bases (default: official schedule)"
    )
    methods.add_argument("--gate-hidden", type=positive_int, help="GainLoRA gate width (default 100 T5, 50 decoder-only)")
    _protocol_option(methods, "--inflora-max-samples", _cap, "samples per task for InfLoRA's input statistics, 0: all")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.seeds = [seed for group in args.seeds for seed in group]
    if not args.seeds:
        parser.error("--seeds needs at least one value")
    try:
        order = args.tasks if args.tasks else (args.order or DEFAULT_ORDER[args.benchmark])
        names = resolve_order(args.benchmark, order)
    except ValueError as error:
        parser.error(str(error))
    if args.num_tasks > len(names):
        parser.error(f"--num-tasks {args.num_tasks} but the order has {len(names)} tasks")
    args.order = None if args.tasks else order
    args.task_names = list(names[: args.num_tasks])
    args.out = args.out or f"results/lm/{args.benchmark}_" + (f"order{args.order}" if args.order else "custom")
    args.rank = args.rank or DEFAULT_RANK[args.benchmark]
    return args


def settings_from_args(args: argparse.Namespace) -> LMSettings:
    """The run protocol of parsed arguments."""
    return LMSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        rank=args.rank,
        alpha=args.alpha,
        target_modules=tuple(args.target_modules) if args.target_modules else None,
        max_prompt_tokens=args.max_prompt_tokens,
        max_answer_tokens=args.max_answer_tokens,
        max_new_tokens=args.max_new_tokens,
        eval_all_tasks=args.eval_all_tasks,
        methods=MethodOptions(
            lambda1=args.lambda1,
            threshold=args.threshold,
            gate_hidden=args.gate_hidden,
            inflora_max_samples=args.inflora_max_samples,
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sweep and print its summary.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    if args.distributed:
        if setup_distributed(args.seeds[0], cpu=not args.device.startswith("cuda")) == 1:
            raise SystemExit("--distributed needs a launch with several processes, e.g. torchrun --nproc_per_node=2")
        if args.device.startswith("cuda:"):
            raise SystemExit("--distributed gives each process the GPU of its LOCAL_RANK: pass --device cuda")
        if args.device == "cuda":  # one GPU per process
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    with exit_on_user_error():
        tasks = load_tasks(
            args.benchmark,
            args.task_names,
            args.data_root,
            max_train=args.max_train,
            max_test=args.max_test,
            seed=args.data_seed,
            carve_test_from_train=args.carve_test_from_train,
        )
        data = {
            "order": args.order,
            "max_train": args.max_train,
            "max_test": args.max_test,
            "data_seed": args.data_seed,
            "carve_test_from_train": args.carve_test_from_train,
            "sizes": {task.name: [len(task.train), len(task.test)] for task in tasks},
        }
        settings = settings_from_args(args)
        loader = CachedModelLoader(args.model, device=args.device)
        for seed in args.seeds:
            for method in args.methods:
                run_lm(
                    method,
                    seed,
                    args.out,
                    tasks=tasks,
                    model_name=args.model,
                    settings=settings,
                    model_factory=loader,
                    data=data,
                    device=args.device,
                    force=args.force,
                    progress=DistributedHelper.is_main_process,
                    verbose=args.verbose,
                )
        if DistributedHelper.is_main_process:
            print(write_lm_report(args.out))
            print(f"Records, summary.md, summary.csv and figures are in {args.out}")
    shutdown_distributed()


if __name__ == "__main__":
    main()
