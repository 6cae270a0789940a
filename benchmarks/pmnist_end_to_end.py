"""End-to-end PMNIST: our Avalanche GPM against a plain PyTorch loop written the way research code is.

Both sides train the paper's 784-100-100-10 MLP on the same Permuted MNIST tensors with the paper's
protocol (plain SGD, lr 0.01, batch 10, 5 epochs per task, thresholds [0.95, 0.99, 0.99], 300
samples per layer for the memory update) and evaluate every task's test set after each task.

- **ours**: :class:`avalanche_gpm.GPM` built by the experiment runner's strategy factory, trained
  and evaluated through Avalanche (data loaders, plugin callbacks, metrics).
- **Avalanche Naive**: the same without GPM, which separates Avalanche's own per-iteration cost
  from GPM's.
- **plain**: slices a shuffled tensor into batches and after every backward replaces each
  protected gradient ``g`` by ``g - g @ (M M^T)`` with the dense ``in x in`` matrix precomputed per
  task, as the official GPM code does. Its memory update uses the same basis growth as ours
  (:func:`avalanche_gpm.subspace.grow_basis`), so the two differ only in how they train.

The two sides run one after the other in one process and thread setting; wall times cover
training and evaluation (not data loading), and the evaluation part is reported on its own. The
accuracy matrices should agree within seed noise (the two sides draw their initial weights and
batch orders from different generator states).

    python -m benchmarks.pmnist_end_to_end --data-root ../shared/data [--tasks 10] [--epochs 5]
        [--train-size N] [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from avalanche_gpm.subspace import grow_basis
from avalanche_gpm.models import pmnist_mlp
from gpm_gainlora_experiments.image.benchmarks import get_benchmark
from gpm_gainlora_experiments.image.benchmarks.image_data import TaskSplits, make_benchmark
from gpm_gainlora_experiments.image.benchmarks.pmnist import pmnist_tasks
from gpm_gainlora_experiments.common.evaluation import accuracy_row, quiet_evaluator
from gpm_gainlora_experiments.common.metrics import acc_bwt
from gpm_gainlora_experiments.image.strategies import build_strategy

THRESHOLDS = (0.95, 0.99, 0.99)
NUM_SAMPLES = 300
#: The issue's target: our wall time / the plain loop's.
TARGET = 1.0


def run_avalanche(
    strategy_name: str, tasks: list[TaskSplits], *, epochs: int, seed: int, progress: bool
) -> tuple[list[list[float]], float, float]:
    """Train a registered strategy through Avalanche.

    :return: the accuracy matrix, the seconds it all took, and the seconds of them spent evaluating.
    """
    torch.manual_seed(seed)
    hyperparams = get_benchmark("pmnist").defaults.replace(epochs=epochs)
    benchmark = make_benchmark(tasks, [0] * len(tasks)).benchmark
    strategy = build_strategy(
        strategy_name, model=pmnist_mlp(), hyperparams=hyperparams, evaluator=quiet_evaluator(), device="cpu"
    )
    matrix = []
    evaluating = 0.0
    start = time.perf_counter()
    for experience in tqdm(benchmark.train_stream, desc=f"Avalanche {strategy_name}", disable=not progress):
        strategy.train(experience)
        eval_start = time.perf_counter()
        matrix.append(accuracy_row(strategy.eval(benchmark.test_stream), len(tasks)))
        evaluating += time.perf_counter() - eval_start
    return matrix, time.perf_counter() - start, evaluating


def _layer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Inputs of fc1, fc2 and fc3 for a batch, as the representation rows of the memory update."""
    h1 = torch.relu(model.fc1(x))
    return [x, h1, torch.relu(model.fc2(h1))]


def run_plain(
    tasks: list[TaskSplits], *, epochs: int, seed: int, progress: bool
) -> tuple[list[list[float]], float, float]:
    """Train GPM with a hand-written loop and dense projections; return what :func:`run_avalanche` does."""
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
    tasks = pmnist_tasks(args.data_root, args.tasks, args.seed, train_size_per_task=args.train_size)
    progress = not args.no_progress
    plain_matrix, plain_s, plain_eval_s = run_plain(tasks, epochs=args.epochs, seed=args.seed, progress=progress)
    ours_matrix, ours_s, ours_eval_s = run_avalanche("gpm", tasks, epochs=args.epochs, seed=args.seed, progress=progress)
    naive_matrix, naive_s, naive_eval_s = run_avalanche(
        "naive", tasks, epochs=args.epochs, seed=args.seed, progress=progress
    )
    (ours_acc, ours_bwt), (plain_acc, plain_bwt) = acc_bwt(ours_matrix), acc_bwt(plain_matrix)
    naive_acc, naive_bwt = acc_bwt(naive_matrix)
    steps = args.tasks * args.epochs * -(-len(tasks[0].train[1]) // 10)
    record = {
        "protocol": {"tasks": args.tasks, "epochs": args.epochs, "train_size": len(tasks[0].train[1]),
                     "batch": 10, "seed": args.seed, "training_steps": steps},
        "environment": {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor()},
        "ours": {"seconds": ours_s, "eval_seconds": ours_eval_s, "acc": ours_acc, "bwt": ours_bwt,
                 "accuracy_matrix": ours_matrix},
        "plain": {"seconds": plain_s, "eval_seconds": plain_eval_s, "acc": plain_acc, "bwt": plain_bwt,
                  "accuracy_matrix": plain_matrix},
        "avalanche_naive": {"seconds": naive_s, "eval_seconds": naive_eval_s, "acc": naive_acc, "bwt": naive_bwt,
                            "accuracy_matrix": naive_matrix},
        "ratio": ours_s / plain_s,
        "target": TARGET,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pmnist_end_to_end.json").write_text(json.dumps(record, indent=2))
    mark = "" if record["ratio"] <= TARGET else " (missed)"
    table = (
        f"PMNIST, {args.tasks} tasks x {args.epochs} epochs, {len(tasks[0].train[1])} training samples per task, "
        f"batch 10 ({steps} steps), {torch.get_num_threads()} thread(s)\n\n"
        "| side | wall time (s) | of which evaluation (s) | ACC (%) | BWT (points) |\n|---|---:|---:|---:|---:|\n"
        f"| plain loop, dense projection | {plain_s:.1f} | {plain_eval_s:.1f} | {100 * plain_acc:.2f} | {100 * plain_bwt:.2f} |\n"
        f"| ours (Avalanche GPM) | {ours_s:.1f} | {ours_eval_s:.1f} | {100 * ours_acc:.2f} | {100 * ours_bwt:.2f} |\n"
        f"| Avalanche Naive (no GPM) | {naive_s:.1f} | {naive_eval_s:.1f} | {100 * naive_acc:.2f} | {100 * naive_bwt:.2f} |\n\n"
        f"ours / plain: {record['ratio']:.2f}{mark} (target <= {TARGET:.2f})\n"
    )
    (out / "pmnist_end_to_end.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
