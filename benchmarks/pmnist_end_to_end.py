"""End-to-end PMNIST: our Avalanche GPM against a plain PyTorch loop written the way research code is.

Both sides train the paper's 784-100-100-10 MLP on the same Permuted MNIST tensors with the paper's
protocol (plain SGD, lr 0.01, batch 10, 5 epochs per task, thresholds [0.95, 0.99, 0.99], 300
samples per layer for the memory update) and evaluate every task's test set after each task.

- **ours**: :class:`avalanche_gpm.GPM` built by the experiment runner's strategy factory, trained
  and evaluated through Avalanche (plugin callbacks, metrics) on the runner's benchmark (one shared
  copy of MNIST, permuted per batch) with the runner's :class:`BatchedLoading` data path.
- **Avalanche Naive**: the same without GPM, which separates Avalanche's own per-iteration cost
  from GPM's.
- **plain**: what the official GPM script does. It stores every task's permuted copy, slices a
  shuffled tensor into batches, after every backward replaces each protected gradient ``g`` by
  ``g - g @ (M M^T)`` with the dense ``in x in`` matrix precomputed per task, and after every epoch
  evaluates the whole training set and the validation split (loss and accuracy, as the official
  script prints them). Its memory update uses the same basis growth as ours
  (:func:`avalanche_gpm.subspace.grow_basis`), so the sides differ only in how they train.

Each side runs in its own process (one after the other, same thread setting), which gives its peak
resident memory; wall times cover training and evaluation (not data loading), and the test-set
evaluation after each task is reported on its own. The accuracy matrices should agree within seed
noise (the sides draw their initial weights and batch orders from different generator states).

    python -m benchmarks.pmnist_end_to_end --data-root ../shared/data [--tasks 10] [--epochs 5]
        [--train-size N] [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from avalanche_gpm.subspace import grow_basis
from avalanche_gpm.models import pmnist_mlp
from gpm_gainlora_experiments.image.benchmarks import get_benchmark
from gpm_gainlora_experiments.image.benchmarks.pmnist import pmnist, pmnist_tasks
from gpm_gainlora_experiments.image.plugins import BatchedLoading
from gpm_gainlora_experiments.common.evaluation import accuracy_row, quiet_evaluator
from gpm_gainlora_experiments.common.metrics import acc_bwt
from gpm_gainlora_experiments.common.provenance import cpu_model
from gpm_gainlora_experiments.image.strategies import build_strategy

THRESHOLDS = (0.95, 0.99, 0.99)
NUM_SAMPLES = 300
#: Targets: our wall time / the plain loop's, our peak resident memory, our evaluation cost.
TARGET = 0.6
TARGET_RSS_GB = 1.2
TARGET_EVAL_US = 5.0


def run_avalanche(
    strategy_name: str, data_root: str, *, tasks: int, epochs: int, train_size: int | None, seed: int, progress: bool
) -> tuple[list[list[float]], float, float]:
    """Train a registered strategy through Avalanche, as the experiment runner does.

    :return: the accuracy matrix, the seconds it all took, and the seconds of them spent evaluating.
    """
    torch.manual_seed(seed)
    hyperparams = get_benchmark("pmnist").defaults.replace(epochs=epochs)
    benchmark = pmnist(data_root, tasks, seed, train_size_per_task=train_size).benchmark
    strategy = build_strategy(
        strategy_name, model=pmnist_mlp(), hyperparams=hyperparams, evaluator=quiet_evaluator(), device="cpu",
        plugins=[BatchedLoading()],
    )  # fmt: skip
    matrix = []
    evaluating = 0.0
    start = time.perf_counter()
    for experience in tqdm(benchmark.train_stream, desc=f"Avalanche {strategy_name}", disable=not progress):
        strategy.train(experience)
        eval_start = time.perf_counter()
        matrix.append(accuracy_row(strategy.eval(benchmark.test_stream), tasks))
        evaluating += time.perf_counter() - eval_start
    return matrix, time.perf_counter() - start, evaluating


def _layer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Inputs of fc1, fc2 and fc3 for a batch, as the representation rows of the memory update."""
    h1 = torch.relu(model.fc1(x))
    return [x, h1, torch.relu(model.fc2(h1))]


def _loss_and_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """What the official script's per-epoch evaluation computes, in chunks of 1000."""
    loss, correct = 0.0, 0
    for x_chunk, y_chunk in zip(x.split(1000), y.split(1000)):
        output = model(x_chunk)
        loss += F.cross_entropy(output, y_chunk, reduction="sum").item()
        correct += (output.argmax(1) == y_chunk).sum().item()
    return loss / len(y), correct / len(y)


def run_plain(
    data_root: str, *, tasks: int, epochs: int, train_size: int | None, seed: int, progress: bool
) -> tuple[list[list[float]], float, float]:
    """Train GPM with a hand-written loop and dense projections; return what :func:`run_avalanche` does."""
    tasks = pmnist_tasks(data_root, tasks, seed, train_size_per_task=train_size)
    torch.manual_seed(seed)
    model = pmnist_mlp()
    layers = [model.fc1, model.fc2, model.fc3]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    bases: list[Tensor | None] = [None] * len(layers)
    matrix = []
    evaluating = 0.0
    start = time.perf_counter()
    for task in tqdm(tasks, desc="plain loop (dense projection)", disable=not progress):
        x_train, y_train = task.train
        projections = [None if basis is None else (basis @ basis.T).float() for basis in bases]
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(y_train))
            for batch in order.split(10):
                optimizer.zero_grad()
                F.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
                for layer, projection in zip(layers, projections):
                    if projection is not None:
                        layer.weight.grad -= layer.weight.grad @ projection
                optimizer.step()
            model.eval()
            with torch.no_grad():  # the official script's per-epoch report
                _loss_and_accuracy(model, x_train, y_train)
                _loss_and_accuracy(model, *task.val)
            model.train()
        model.eval()
        with torch.no_grad():
            sample = x_train[torch.randperm(len(y_train))[:NUM_SAMPLES]]
            for i, rows in enumerate(_layer_inputs(model, sample)):
                rows = rows.double()
                bases[i] = grow_basis(bases[i], rows.T @ rows, THRESHOLDS[i]).basis
            eval_start = time.perf_counter()
            row = []
            for x_test, y_test in (task.test for task in tasks):
                predictions = torch.cat([model(chunk).argmax(1) for chunk in x_test.split(1000)])
                row.append((predictions == y_test).float().mean().item())
            evaluating += time.perf_counter() - eval_start
        matrix.append(row)
    return matrix, time.perf_counter() - start, evaluating


def _run_side(side: str, arguments: dict, results: multiprocessing.Queue) -> None:
    """One side in a fresh process: its accuracy matrix, times and peak resident memory (GB)."""
    torch.set_num_threads(arguments.pop("threads"))
    if side == "plain":
        matrix, seconds, eval_seconds = run_plain(**arguments)
    else:
        matrix, seconds, eval_seconds = run_avalanche(side, **arguments)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    acc, bwt = acc_bwt(matrix)
    results.put({"seconds": seconds, "eval_seconds": eval_seconds, "acc": acc, "bwt": bwt,
                 "peak_rss_gb": peak_gb, "accuracy_matrix": matrix})


def _in_own_process(side: str, arguments: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_run_side, args=(side, arguments, results))
    process.start()
    result = results.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder holding MNIST/raw (torchvision layout)")
    parser.add_argument("--tasks", type=int, default=10, help="number of tasks (paper: 10)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per task (paper: 5)")
    parser.add_argument("--train-size", type=int, default=None, help="cap on training samples per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks", help="folder of pmnist_end_to_end.{json,md}")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    arguments = {"data_root": args.data_root, "tasks": args.tasks, "epochs": args.epochs,
                 "train_size": args.train_size, "seed": args.seed, "progress": not args.no_progress}
    sides = {side: _in_own_process(side, {**arguments, "threads": torch.get_num_threads()})
             for side in ("plain", "gpm", "naive")}  # fmt: skip
    plain, ours, naive = sides["plain"], sides["gpm"], sides["naive"]
    first_task = pmnist_tasks(args.data_root, 1, args.seed, train_size_per_task=args.train_size)[0]
    train_size, test_size = len(first_task.train[1]), len(first_task.test[1])
    steps = args.tasks * args.epochs * -(-train_size // 10)
    test_predictions = args.tasks * args.tasks * test_size  # every task's test set after every task
    eval_us = 1e6 * ours["eval_seconds"] / test_predictions
    record = {
        "protocol": {"tasks": args.tasks, "epochs": args.epochs, "train_size": train_size,
                     "batch": 10, "seed": args.seed, "training_steps": steps, "test_predictions": test_predictions},
        "environment": {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": cpu_model()},
        "ours": ours,
        "plain": plain,
        "avalanche_naive": naive,
        "ratio": ours["seconds"] / plain["seconds"],
        "ours_eval_us_per_sample": eval_us,
        "targets": {"ratio": TARGET, "peak_rss_gb": TARGET_RSS_GB, "eval_us_per_sample": TARGET_EVAL_US},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pmnist_end_to_end.json").write_text(json.dumps(record, indent=2))

    def row(name: str, side: dict) -> str:
        return (f"| {name} | {side['seconds']:.1f} | {side['eval_seconds']:.1f} | {side['peak_rss_gb']:.2f} | "
                f"{100 * side['acc']:.2f} | {100 * side['bwt']:.2f} |\n")

    def mark(value: float, target: float) -> str:
        return "met" if value <= target else "missed"

    table = (
        f"PMNIST, {args.tasks} tasks x {args.epochs} epochs, {train_size} training samples per task, "
        f"batch 10 ({steps} steps), {torch.get_num_threads()} thread(s), each side in its own process\n\n"
        "| side | wall time (s) | of which test evaluation (s) | peak RSS (GB) | ACC (%) | BWT (points) |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        + row("plain loop (official-style: dense projection, per-epoch train/val evaluation)", plain)
        + row("ours (Avalanche GPM, batched loading)", ours)
        + row("Avalanche Naive (no GPM, batched loading)", naive)
        + f"\nours / plain: {record['ratio']:.2f} (target <= {TARGET:.2f}: {mark(record['ratio'], TARGET)}); "
        f"our peak RSS {ours['peak_rss_gb']:.2f} GB (target <= {TARGET_RSS_GB}: {mark(ours['peak_rss_gb'], TARGET_RSS_GB)}); "
        f"our evaluation {eval_us:.1f} us/sample (target <= {TARGET_EVAL_US}: {mark(eval_us, TARGET_EVAL_US)})\n"
    )
    (out / "pmnist_end_to_end.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
