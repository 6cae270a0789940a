"""Run LoRA continual-learning methods on an instruction-tuning task order, then write the report.

Example (the CPU protocol, i.e. every default spelled out)::

    gpm-gainlora-lm-run --benchmark superni --order 1 --data-root ../shared/data \\
        --out results/lm/superni_order1 --model smollm2-135m-instruct --seeds 0

Every (method, seed) pair is one JSON record in ``--out``; a pair whose record exists with the
same configuration is skipped, so an interrupted sweep resumes when the same command is run
again (``--force`` reruns). The model is loaded once and copied for each run.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from avalanche_gainlora.bases import BASIS_RULES, OFFICIAL_SCHEDULE_TASKS
from avalanche_gainlora.distributed import DistributedHelper, setup_distributed, shutdown_distributed
from avalanche_gainlora.strategy import PRECISIONS
from gpm_gainlora_experiments.lm.instruction import load_tasks, resolve_order
from gpm_gainlora_experiments.lm.methods import METHODS, MethodOptions, parse_methods
from gpm_gainlora_experiments.lm.models import ALIASES, CachedModelLoader
from gpm_gainlora_experiments.lm.report import write_lm_report
from gpm_gainlora_experiments.lm.runner import LMSettings, run_lm
from gpm_gainlora_experiments.common.cli_errors import exit_on_user_error
from gpm_gainlora_experiments.common.cli_types import add_logger_arguments, comma_list, device_name, positive_float, positive_int, random_seed

#: Preset order of each benchmark when neither --order nor --tasks is given.
DEFAULT_ORDER = {"superni": 1, "long_sequence": 3}

#: LoRA rank of the reference scripts by benchmark.
DEFAULT_RANK = {"superni": 4, "long_sequence": 8}

#: The CPU smoke protocol (``--preset cpu``, the default): the five methods on the first four
#: tasks of one order in about an hour on two CPU cores with SmolLM2-135M; 8 steps per task, so
#: it checks the pipeline, not the methods.
CPU_PROTOCOL: dict[str, Any] = {
    "num_tasks": 4,
    "max_train": 64,
    "max_test": 16,
    "epochs": 1,
    "min_steps": None,
    "batch_size": 8,
    "eval_batch_size": 16,
    "lr": 1e-3,
    "max_prompt_tokens": 128,
    "max_answer_tokens": 24,
    "max_new_tokens": 24,
    "inflora_max_samples": 16,
    "precision": "fp32",
}

#: ``--preset claim``: long enough for GainLoRA's gates to open, to compare GainLoRA(X) with X:
#: at least 100 optimizer steps on each of the first 4 tasks (800 training examples, more epochs
#: for smaller tasks), 50 test examples per task, InfLoRA statistics from 256 samples, fp32 (a
#: short bf16 check did not yet show equal scores, see the README). The lr was chosen on a
#: validation carve of the training split (``--validation-from-train``), never on the test split.
CLAIM_PROTOCOL: dict[str, Any] = {
    **CPU_PROTOCOL,
    "max_train": 800,
    "max_test": 50,
    "min_steps": 100,
    "eval_batch_size": 25,
    "inflora_max_samples": 256,
}

PRESETS: dict[str, dict[str, Any]] = {"cpu": CPU_PROTOCOL, "claim": CLAIM_PROTOCOL}


def _protocol_help(protocol: Mapping[str, Any]) -> str:
    steps = "" if protocol["min_steps"] is None else f" (at least {protocol['min_steps']} steps per task)"
    return (
        f"{protocol['num_tasks']} tasks, {protocol['max_train']} training and {protocol['max_test']} test examples "
        f"per task, {protocol['epochs']} epoch{steps}, batch {protocol['batch_size']}, lr {protocol['lr']} "
        f"(constant, AdamW without weight decay, gradients clipped at norm 1), prompts cut to "
        f"{protocol['max_prompt_tokens']} tokens, answers to {protocol['max_answer_tokens']}, "
        f"{protocol['max_new_tokens']} generated tokens, InfLoRA statistics from "
        f"{protocol['inflora_max_samples']} samples per task, {protocol['precision']}"
    )


_PROTOCOL_HELP = (
    f"Presets (--preset): cpu (default; about an hour for the five methods on 2 cores with SmolLM2-135M): "
    f"{_protocol_help(CPU_PROTOCOL)}; claim: {_protocol_help(CLAIM_PROTOCOL)}. "
    "The seen tasks are evaluated after each task. Every option below overrides its preset value. "
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


def _grad_norm(text: str) -> float | None:
    """A positive clipping norm; 0 switches clipping off."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0: no clipping), got {text}")
    return value or None


def _preset_name(argv: Sequence[str] | None) -> str:
    """The ``--preset`` of a command line (parsed first: it sets the other options' defaults)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    known, _ = early.parse_known_args(argv)
    return known.preset


def build_parser(preset: str = "cpu") -> argparse.ArgumentParser:
    """The command-line parser, with the defaults of ``preset`` (its help documents the presets)."""
    protocol = PRESETS[preset]

    def _protocol_option(group: argparse._ArgumentGroup, flag: str, kind: Any, text: str) -> None:
        default = protocol[flag.removeprefix("--").replace("-", "_")]
        group.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")

    parser = argparse.ArgumentParser(
        prog="gpm-gainlora-lm-run", description=__doc__.split("\n\n")[0] + " " + _PROTOCOL_HELP
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="protocol preset (default cpu)")
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
    data.add_argument(
        "--validation-from-train",
        type=positive_int,
        help="evaluate on this many examples per task held out of the training split (seeded), not on the "
        "test split: for choosing options such as --lr (records say eval_split valid)",
    )

    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--methods",
        type=_methods,
        default=list(METHODS),
        help=f"comma-separated, from {', '.join(METHODS)} (default all)",
    )
    runs.add_argument("--seeds", type=comma_list(random_seed), nargs="+", default=[[0]], help="'0 1 2' or 0,1,2 (default 0)")
    runs.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help=f"Hugging Face name or folder, or an offline alias: {', '.join(ALIASES)} (default; `make lm-setup`)",
    )
    runs.add_argument("--out", help="output folder (default results/lm/<benchmark>_order<N> or <benchmark>_custom)")
    runs.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (default cpu)")
    runs.add_argument("--force", action="store_true", help="rerun and overwrite existing records")
    add_logger_arguments(runs)
    runs.add_argument(
        "--distributed",
        action="store_true",
        help="train with DDP over the processes of a torchrun launch (the global batch is split over them, "
        "the test prompts too), e.g. torchrun --nproc_per_node=2 -m gpm_gainlora_experiments.lm.run --distributed ...",
    )

    train = parser.add_argument_group("training and evaluation")
    _protocol_option(train, "--epochs", positive_int, "epochs per task")
    _protocol_option(train, "--min-steps", _cap, "more epochs for tasks with fewer optimizer steps, 0: none")
    _protocol_option(train, "--batch-size", positive_int, "training mini-batch size")
    _protocol_option(train, "--eval-batch-size", positive_int, "prompts per generation batch")
    _protocol_option(train, "--lr", positive_float, "constant AdamW learning rate")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    train.add_argument(
        "--max-grad-norm", type=_grad_norm, default=1.0, help="clip the gradient norm (default 1.0, Hugging Face's), 0: off"
    )
    train.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=protocol["precision"],
        help=f"bf16: autocast of training and generation (default {protocol['precision']})",
    )
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
    methods.add_argument(
        "--schedule-tasks",
        type=positive_int,
        default=OFFICIAL_SCHEDULE_TASKS,
        help=f"T of the official schedule (default {OFFICIAL_SCHEDULE_TASKS}, the benchmarks' length)",
    )
    methods.add_argument(
        "--basis-rule",
        choices=tuple(BASIS_RULES),
        default="official",
        help="energy rule of InfLoRA / GainLoRA bases: official (squared covariance eigenvalues) or gpm (default official)",
    )
    methods.add_argument("--gate-hidden", type=positive_int, help="GainLoRA gate width (default 100 T5, 50 decoder-only)")
    _protocol_option(methods, "--inflora-max-samples", _cap, "samples per task for InfLoRA's input statistics, 0: all")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line.

    :param argv: arguments (default ``sys.argv[1:]``).
    """
    parser = build_parser(_preset_name(argv))
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
        min_steps=args.min_steps,
        max_grad_norm=args.max_grad_norm,
        precision=args.precision,
        methods=MethodOptions(
            lambda1=args.lambda1,
            threshold=args.threshold,
            schedule_tasks=args.schedule_tasks,
            basis_rule=args.basis_rule,
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
            validation_from_train=args.validation_from_train,
        )
        data = {
            "order": args.order,
            "max_train": args.max_train,
            "max_test": args.max_test,
            "data_seed": args.data_seed,
            "carve_test_from_train": args.carve_test_from_train,
            "eval_split": "valid" if args.validation_from_train else "test",
            "validation_from_train": args.validation_from_train,
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
                    loggers=args.loggers,
                    log_dir=args.log_dir,
                )
        if DistributedHelper.is_main_process:
            print(write_lm_report(args.out))
            print(f"Records, summary.md, summary.csv and figures are in {args.out}")
    shutdown_distributed()


if __name__ == "__main__":
    main()
