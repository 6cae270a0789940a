"""GPM's memory update time per experience, against layer width and the number of experiences.

One update is what the plugin does after an experience: a forward pass of the capture samples
with hooks accumulating each protected layer's Gram matrix (*capture*), then the eigendecomposition
of each layer's residual Gram matrix and the basis growth in float64 (*decomposition*,
:meth:`GradientProjectionMemory.update`). Inputs are random, new ones every experience, so the
bases grow until the thresholds are met; the cost depends on the layers' input dimensions, not on
what the inputs show.

Two tables:

- **width**: the PMNIST MLP ``784-w-w-10`` for several hidden widths ``w``, updates 1 to
  ``--experiences`` (300 samples, thresholds 0.97), mean time per update;
- **networks**: the paper's networks (PMNIST MLP, AlexNet, reduced ResNet18) with their sample
  counts, the time of every update from the first to the ``--experiences``-th.

    python -m benchmarks.gpm_update_cost [--experiences 10] [--widths 100,400,1000,2000]
        [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avalanche_gpm.capture import GramRecorder, input_dim
from avalanche_gpm.memory import GradientProjectionMemory
from avalanche_gpm.models import alexnet, pmnist_mlp, reduced_resnet18
from avalanche_gpm.selection import select_layers
from gpm_gainlora_experiments.common.provenance import cpu_model
from benchmarks.gpm_step_cost import forward_task0

THRESHOLD = 0.97


@dataclass(frozen=True)
class Network:
    """A network, the shape of one input sample and the capture samples of each protected layer."""

    name: str
    model: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_samples: Callable[[list[str]], dict[str, int]]


def _same(count: int) -> Callable[[list[str]], dict[str, int]]:
    return lambda names: {name: count for name in names}


NETWORKS = (
    Network("pmnist_mlp", pmnist_mlp, (784,), _same(300)),
    # The paper's AlexNet counts, layer by layer (conv1, conv2, conv3, fc1, fc2).
    Network("alexnet", lambda: alexnet(classes_per_task=10), (3, 32, 32),
            lambda names: dict(zip(names, (24, 100, 100, 125, 125)))),
    Network("reduced_resnet18", lambda: reduced_resnet18(classes_per_task=10), (3, 32, 32), _same(100)),
)


@torch.no_grad()
def time_updates(
    model: nn.Module, input_shape: tuple[int, ...], num_samples: Mapping[str, int], experiences: int, seed: int = 0
) -> list[dict]:
    """Capture and decomposition seconds of ``experiences`` successive updates, and the memory fill."""
    torch.manual_seed(seed)
    model.eval()
    layers = select_layers(model).protected
    memory = GradientProjectionMemory({name: input_dim(layer) for name, layer in layers.items()})
    thresholds = {name: THRESHOLD for name in layers}
    rows = []
    for experience in range(experiences):
        x = torch.randn(max(num_samples.values()), *input_shape)
        start = time.perf_counter()
        recorder = GramRecorder(layers, num_samples)
        with recorder.recording():
            forward_task0(model, x)
        captured = time.perf_counter()
        memory.update(recorder.grams, thresholds)
        done = time.perf_counter()
        usage = memory.usage()
        rows.append({
            "experience": experience + 1,
            "capture_s": captured - start,
            "decomposition_s": done - captured,
            "total_s": done - start,
            "memory_fraction": sum(u.basis_size for u in usage.values()) / sum(u.input_dim for u in usage.values()),
        })
    return rows


def width_table(widths: list[int], experiences: int) -> list[dict]:
    """Mean update time of the MLP ``784-w-w-10`` for every width."""
    table = []
    for width in widths:
        model = pmnist_mlp(hidden=width)
        rows = time_updates(model, (784,), _same(300)(list(select_layers(model).protected)), experiences)
        table.append({
            "width": width,
            "largest_input_dim": max(784, width),
            "mean_capture_s": statistics.mean(r["capture_s"] for r in rows),
            "mean_decomposition_s": statistics.mean(r["decomposition_s"] for r in rows),
            "mean_total_s": statistics.mean(r["total_s"] for r in rows),
        })
    return table


def networks_table(experiences: int, wanted: list[str]) -> dict[str, list[dict]]:
    """Time of every update of each of the paper's networks."""
    table = {}
    for network in NETWORKS:
        if network.name in wanted:
            model = network.model()
            names = list(select_layers(model).protected)
            table[network.name] = time_updates(model, network.input_shape, network.num_samples(names), experiences)
    return table


def markdown(widths: list[dict], networks: dict[str, list[dict]]) -> str:
    lines = [
        "| MLP hidden width | largest input dim | capture (s) | decomposition (s) | update (s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in widths:
        lines.append(
            f"| {row['width']} | {row['largest_input_dim']} | {row['mean_capture_s']:.3f} "
            f"| {row['mean_decomposition_s']:.3f} | {row['mean_total_s']:.3f} |"
        )
    lines += ["", "| network | experience | capture (s) | decomposition (s) | update (s) | memory fill |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, rows in networks.items():
        for row in rows:
            lines.append(
                f"| {name} | {row['experience']} | {row['capture_s']:.3f} | {row['decomposition_s']:.3f} "
                f"| {row['total_s']:.3f} | {row['memory_fraction']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiences", type=int, default=10, help="successive updates (default 10)")
    parser.add_argument("--widths", default="100,400,1000,2000", help="comma-separated MLP hidden widths")
    parser.add_argument("--networks", default=",".join(n.name for n in NETWORKS), help="comma-separated subset")
    parser.add_argument("--out", default="results/benchmarks", help="folder of gpm_update_cost.{json,md}")
    args = parser.parse_args(argv)
    widths = width_table([int(w) for w in args.widths.split(",") if w], args.experiences)
    networks = networks_table(args.experiences, args.networks.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    environment = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": cpu_model()}
    record = {"environment": environment, "threshold": THRESHOLD, "widths": widths, "networks": networks}
    (out / "gpm_update_cost.json").write_text(json.dumps(record, indent=2))
    table = markdown(widths, networks)
    (out / "gpm_update_cost.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
