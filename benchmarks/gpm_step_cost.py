"""GPM's cost per training iteration relative to a plain step on the same model and batch.

For each network of the paper (PMNIST MLP at batch 10, AlexNet and reduced ResNet18 at batch 64)
and each memory fill (a random orthonormal basis holding 10 %, 50 % or 90 % of every protected
layer's input dimension), one iteration is what the GPM plugin adds to Avalanche's loop: the
step recorder armed around forward/backward, ``GradientProjectionMemory.project_gradients`` after
backward, then the SGD step. Naive is the same loop without the recorder and the projection.

Both loops exclude Avalanche's own per-iteration overhead, which is the same for both strategies:
the ratio is therefore stricter than GPM-in-Avalanche vs Naive-in-Avalanche. Naive and GPM steps
alternate in short blocks, and the median over blocks is reported, so that load on the machine
affects both sides alike.

    python -m benchmarks.gpm_step_cost [--rounds 15] [--steps 10] [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_gpm.capture import input_dim
from avalanche_gpm.memory import GradientProjectionMemory
from avalanche_gpm.models import alexnet, pmnist_mlp, reduced_resnet18
from avalanche_gpm.selection import select_layers
from avalanche_gpm.step_recorder import StepRecorder
from gpm_gainlora_experiments.common.provenance import cpu_model

FILLS = (0.1, 0.5, 0.9)
#: The issue's targets: GPM step time / Naive step time.
TARGETS = {"pmnist_mlp": 1.5, "alexnet": 1.10, "reduced_resnet18": 1.10}


@dataclass(frozen=True)
class Case:
    """A network and one training batch for it."""

    name: str
    model: Callable[[], nn.Module]
    batch: int
    input_shape: tuple[int, ...]
    classes: int


CASES = (
    Case("pmnist_mlp", pmnist_mlp, 10, (784,), 10),
    Case("alexnet", lambda: alexnet(classes_per_task=10), 64, (3, 32, 32), 10),
    Case("reduced_resnet18", lambda: reduced_resnet18(classes_per_task=10), 64, (3, 32, 32), 10),
)


def forward_task0(model: nn.Module, x: Tensor) -> Tensor:
    # Multi-head models take a task label; every sample of the batch belongs to task 0.
    return model(x, torch.zeros(len(x), dtype=torch.long)) if hasattr(model, "forward_single_task") else model(x)


def filled_memory(model: nn.Module, fill: float, generator: torch.Generator) -> tuple[GradientProjectionMemory, dict]:
    """A memory whose every protected layer holds a random orthonormal basis of ``fill`` of its inputs."""
    layers = select_layers(model).protected
    memory = GradientProjectionMemory({name: input_dim(layer) for name, layer in layers.items()})
    for name, layer in layers.items():
        dim = input_dim(layer)
        basis, _ = torch.linalg.qr(torch.randn(dim, max(1, round(fill * dim)), generator=generator, dtype=torch.float64))
        memory.bases[name] = basis
    return memory, layers


def time_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int, gpm: tuple | None
) -> float:
    """Seconds per iteration over ``steps`` iterations (GPM's hooks when ``gpm`` is given)."""
    start = time.perf_counter()
    for _ in range(steps):
        if gpm is not None:
            gpm[2].start_step()
        optimizer.zero_grad()
        F.cross_entropy(forward_task0(model, x), y).backward()
        if gpm is not None:
            memory, layers, recorder = gpm
            memory.project_gradients(layers, recorder.records)
            recorder.finish_step()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(case: Case, fill: float, *, rounds: int, steps: int, seed: int = 0) -> dict:
    """Median per-step times of Naive and GPM over alternating blocks, and their ratio."""
    torch.manual_seed(seed)
    model = case.model()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(case.batch, *case.input_shape)
    y = torch.randint(0, case.classes, (case.batch,))
    memory, layers = filled_memory(model, fill, torch.Generator().manual_seed(seed))
    linear = {name: layer for name, layer in layers.items() if isinstance(layer, nn.Linear)}
    recorder = StepRecorder(linear, lambda name, rows: memory.projects_inputs(name, rows, linear[name].weight.shape[0]))
    gpm = (memory, layers, recorder)
    time_steps(model, optimizer, x, y, 2, None), time_steps(model, optimizer, x, y, 2, gpm)  # warm-up
    naive, projected = [], []
    for _ in range(rounds):
        naive.append(time_steps(model, optimizer, x, y, steps, None))
        projected.append(time_steps(model, optimizer, x, y, steps, gpm))
    recorder.remove()
    naive_s, gpm_s = statistics.median(naive), statistics.median(projected)
    return {
        "model": case.name,
        "batch": case.batch,
        "fill": fill,
        "naive_ms": 1000 * naive_s,
        "gpm_ms": 1000 * gpm_s,
        "ratio": gpm_s / naive_s,
        "target": TARGETS[case.name],
        "paths": dict(memory.last_paths),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | batch | memory fill | Naive (ms) | GPM (ms) | GPM / Naive | target |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = "" if row["ratio"] <= row["target"] else " (missed)"
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['fill']:.0%} | {row['naive_ms']:.2f} | {row['gpm_ms']:.2f} "
            f"| {row['ratio']:.2f}{mark} | <= {row['target']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating Naive/GPM blocks (default 15)")
    parser.add_argument("--steps", type=int, default=10, help="iterations per block (default 10)")
    parser.add_argument("--models", default=",".join(case.name for case in CASES), help="comma-separated subset")
    parser.add_argument("--out", default="results/benchmarks", help="folder of gpm_step_cost.{json,md}")
    args = parser.parse_args(argv)
    wanted = args.models.split(",")
    rows = [
        measure(case, fill, rounds=args.rounds, steps=args.steps)
        for case in CASES
        if case.name in wanted
        for fill in FILLS
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": cpu_model()}
    (out / "gpm_step_cost.json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=2))
    table = markdown(rows)
    (out / "gpm_step_cost.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
