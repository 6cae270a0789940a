"""GainLoRA's training-step time and peak memory against one plain peft LoRA adapter, as tasks accumulate.

For each model (a tiny 2-layer LLaMA built in code, and SmolLM2-135M-Instruct through the offline
alias ``smollm2-135m-instruct`` of :mod:`gpm_gainlora_experiments.lm.models`) and each number of branches N
(1, 5, 15), two copies of the same base model are trained on the same batch (8 sequences of 64
random token ids, the first half labelled -100 as a prompt) with AdamW over ``model.parameters()``
as Avalanche's ``make_optimizer`` does:

* baseline: one peft LoRA adapter (``get_peft_model``, same rank 8, alpha 32, ``q_proj``/``v_proj``);
* GainLoRA: N branches and N gates set up by the library's own plugin,
  ``GainLoRAPlugin(OLoRAPlugin(...))``, run over N tasks of random prompts (so the gate memory
  holds the bases of N - 1 old tasks), with a stand-in for the strategy. The newest branch (``A``
  and ``B``, as for O-LoRA; O-LoRA's penalty, added in ``before_backward``, is the base method's
  cost, not the gates', and is left out) and the newest gate are trained, the older ones are frozen.

One iteration is what Avalanche's training loop does with this plugin: ``zero_grad``, forward
with labels (the router's pre-hook computes every gate's weight from the prompt), backward,
``GainLoRAPlugin.before_update`` (snapshot of the gate), the optimizer step, and
``GainLoRAPlugin.after_update`` (the new gate's update projected off the old gate-input bases).
Avalanche's own per-iteration overhead is the same for both sides and is left out, so the ratio is
stricter than in a full strategy. Both sides alternate in short blocks and the median over blocks
is reported, so that load on the machine affects both alike. The target (GainLoRA at most 1.2x
the baseline) is the issue's bound at 15 branches; every row is marked against it.

Peak memory is what one iteration in steady state (after a warm-up iteration of both sides) needs
above what the process holds between iterations (weights, optimizer state): activations, gradients
and temporaries. On CUDA it is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
minus ``memory_allocated``; on the CPU the process's peak resident set (``VmHWM``) minus its resident
set, after freed heap memory is handed back to the system (glibc ``malloc_trim``) and the peak is
reset (``/proc/self/clear_refs``), so that memory the side touches counts even where an earlier
side had freed it. The warm-up keeps first-use costs (code pages, lazy initialisation) out. Both
sides live in one process, which saves loading the model again in a fresh subprocess per side, but
the allocator's history still shows in the CPU values: against a fresh process per side
(SmolLM2, 15 branches: 1029 MiB baseline, 988 MiB GainLoRA) this process measured about 10 %
more for both sides after the earlier rows. Compare the two sides of a row, and read differences
of a few percent as noise.

    python -m benchmarks.gainlora_step_cost [--models tiny_llama,smollm2-135m-instruct] [--branches 1,5,15]
        [--rounds R] [--steps S] [--device cuda|cpu] [--out results/benchmarks]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, PreTrainedModel

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.bases import official_threshold
from avalanche_gainlora.plugins import GainLoRAPlugin, OLoRAPlugin
from avalanche_gainlora.routing import IGNORE_INDEX
from gpm_gainlora_experiments.common.provenance import cpu_model
from gpm_gainlora_experiments.lm.models import resolve_model
from tests.lm_fixtures import tiny_llama  # the tests' 2-layer LLaMA, hidden size 32, 128 tokens

TINY = "tiny_llama"
SMOLLM2 = "smollm2-135m-instruct"
BRANCHES = (1, 5, 15)
#: The issue's target: GainLoRA step time / baseline step time at 15 branches.
TARGET = 1.2
RANK, ALPHA, TARGET_MODULES = 8, 32.0, ("q_proj", "v_proj")
#: Gate width the paper uses for LLaMA models.
GATE_WIDTH = 50
BATCH, SEQUENCE = 8, 64
#: Random prompts per set-up task, pooled by the gates (the gate memory's bases grow from them).
TASK_PROMPTS = 16


@dataclass(frozen=True)
class ModelCase:
    """A model and its default timing effort (a SmolLM2 step takes seconds on one CPU thread)."""

    name: str
    rounds: int
    steps: int


CASES = (ModelCase(TINY, rounds=15, steps=10), ModelCase(SMOLLM2, rounds=3, steps=1))


def load_model(name: str) -> PreTrainedModel:
    """The fp32 base model ``name`` on the CPU (SmolLM2 from its GGUF file, without the tokenizer).

    :param name: :data:`TINY` or :data:`SMOLLM2`.
    :raises Exception: whatever loading SmolLM2 raises (package missing, file missing, ...).
    """
    if name == TINY:
        return tiny_llama()
    source = resolve_model(name)
    return AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **source.kwargs()).eval()


def random_batch(vocab_size: int, batch: int, length: int, seed: int, device: torch.device) -> dict[str, Tensor]:
    """``batch`` sequences of random token ids (special ids 0-2 left out), the first half a prompt without labels.

    :param vocab_size: number of token ids of the model.
    :param batch: sequences.
    :param length: tokens per sequence.
    :param seed: seed of the token ids.
    :param device: where the tensors go.
    """
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    labels = input_ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    batch_inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return {key: value.to(device) for key, value in batch_inputs.items()}


class _PromptTask(Dataset):
    """A task's random prompts in the shape the plugins' extra passes read (``experience.dataset``)."""

    def __init__(self, input_ids: Tensor):
        self.input_ids = input_ids

    def eval(self) -> "_PromptTask":
        return self

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> int:
        return index

    def collate_fn(self, indices: list[int]) -> tuple[dict[str, Tensor]]:
        input_ids = self.input_ids[indices]
        return ({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)},)


@dataclass
class _Experience:
    dataset: _PromptTask
    current_experience: int


@dataclass
class _SetupStrategy:
    """The part of a strategy that the plugins' experience hooks use."""

    device: torch.device
    experience: _Experience
    plugins: tuple[object, ...] = ()

    def make_optimizer(self) -> None:
        """The benchmark builds its optimizer once the branches exist."""


def gainlora_model(model: PreTrainedModel, branches: int, device: torch.device, seed: int = 0) -> GainLoRAPlugin:
    """Give ``model`` the branches and gates of ``branches`` tasks, set up as the plugins do in training.

    ``GainLoRAPlugin(OLoRAPlugin(...))`` runs its ``before_training_exp`` hook for every task and its
    ``after_training_exp`` hook for all but the last, so the newest branch and gate are the
    trainable ones and the gate memory holds the bases of the older tasks. Each task has its own
    random prompts.

    :param model: the base model; branches, gates and the router's hook are added in place.
    :param branches: number of tasks (branches and gates).
    :param device: where the model is.
    :param seed: seed of the tasks' prompts.
    :return: the GainLoRA plugin, whose ``before_update`` / ``after_update`` belong to every iteration.
    """
    lora = LoraBranches(model, target_modules=TARGET_MODULES, rank=RANK, alpha=ALPHA)
    gainlora = GainLoRAPlugin(OLoRAPlugin(lora), hidden=GATE_WIDTH, threshold=official_threshold(branches))
    generator = torch.Generator().manual_seed(seed)
    for task in range(branches):
        prompts = torch.randint(3, model.config.vocab_size, (TASK_PROMPTS, SEQUENCE // 2), generator=generator)
        strategy = _SetupStrategy(device, _Experience(_PromptTask(prompts), task), plugins=(gainlora,))
        gainlora.before_training_exp(strategy)
        if task < branches - 1:
            gainlora.after_training_exp(strategy)
    return gainlora


def peft_model(model: PreTrainedModel) -> nn.Module:
    """``model`` with one trainable peft LoRA adapter of the same rank, alpha and targets as the branches.

    :param model: the base model, wrapped in place by peft.
    """
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGET_MODULES), bias="none")
    with warnings.catch_warnings():
        # peft calls a transformers method deprecated in transformers 5; nothing to act on here.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, config)


@dataclass
class TrainingSide:
    """A model under training and what one iteration calls on it.

    :param model: the model (its forward takes the batch as keyword arguments and returns ``.loss``).
    :param optimizer: its optimizer.
    :param gainlora: the GainLoRA plugin whose update hooks wrap the optimizer step, or ``None``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    gainlora: GainLoRAPlugin | None = None

    def step(self, batch: Mapping[str, Tensor]) -> None:
        """One training iteration.

        :param batch: ``input_ids``, ``attention_mask`` and ``labels``.
        """
        self.optimizer.zero_grad()
        self.model(**batch).loss.backward()
        if self.gainlora is not None:
            self.gainlora.before_update(None)
        self.optimizer.step()
        if self.gainlora is not None:
            self.gainlora.after_update(None)


def training_side(model: nn.Module, gainlora: GainLoRAPlugin | None = None) -> TrainingSide:
    """A side in training mode with AdamW over all of ``model.parameters()`` (Avalanche's ``make_optimizer``).

    :param model: the model with its adapters.
    :param gainlora: the GainLoRA plugin of the model, if any.
    """
    model.train()
    return TrainingSide(model, torch.optim.AdamW(model.parameters(), lr=1e-4), gainlora)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], calls: int, device: torch.device) -> float:
    """Seconds per call over ``calls`` calls.

    :param call: the work of one call.
    :param calls: number of calls.
    :param device: the device the work runs on.
    """
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, "malloc_trim", None)


_MALLOC_TRIM = _libc_malloc_trim() if sys.platform.startswith("linux") else None
_CLEAR_REFS = Path("/proc/self/clear_refs")


def memory_method(device: torch.device) -> str | None:
    """How :func:`call_peak_mib` measures on ``device``, or ``None`` when it cannot.

    :param device: the device the benchmark runs on.
    """
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated above memory_allocated at the start"
    if _MALLOC_TRIM is not None and _CLEAR_REFS.exists():
        return (
            "peak resident set (VmHWM, reset through /proc/self/clear_refs) above VmRSS at the start, after malloc_trim"
        )
    return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def call_peak_mib(call: Callable[[], object], device: torch.device) -> float | None:
    """Make one call and return its peak memory in MiB above the memory held before it (see
    :func:`memory_method`), or ``None`` where that cannot be measured.

    :param call: the work of one call.
    :param device: the device the work runs on.
    """
    if memory_method(device) is None:
        time_calls(call, 1, device)
        return None
    gc.collect()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        # Freed heap pages stay resident; handing them back makes their reuse show in the peak.
        _MALLOC_TRIM(0)
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set
        start = 1024 * _status_kib("VmRSS")
    time_calls(call, 1, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 1024 * _status_kib("VmHWM")
    return (peak - start) / 2**20


def measure(name: str, base: PreTrainedModel, branches: int, *, rounds: int, steps: int, device: torch.device) -> dict:
    """Median step times of the baseline and GainLoRA over alternating blocks, their ratio and peak memory.

    :param name: model name in the row.
    :param base: the pristine base model (copied for each side).
    :param branches: number of GainLoRA branches.
    :param rounds: alternating blocks of each side.
    :param steps: iterations per block.
    :param device: where both sides run.
    """
    baseline = training_side(peft_model(copy.deepcopy(base).to(device)))
    model = copy.deepcopy(base).to(device)
    gainlora = training_side(model, gainlora_model(model, branches, device))
    batch = random_batch(base.config.vocab_size, BATCH, SEQUENCE, seed=branches, device=device)
    # warm-up: first-use costs stay out of both the memory and the times
    time_calls(lambda: baseline.step(batch), 1, device), time_calls(lambda: gainlora.step(batch), 1, device)
    baseline_mib = call_peak_mib(lambda: baseline.step(batch), device)
    gainlora_mib = call_peak_mib(lambda: gainlora.step(batch), device)
    plain, gated = [], []
    for _ in range(rounds):
        plain.append(time_calls(lambda: baseline.step(batch), steps, device))
        gated.append(time_calls(lambda: gainlora.step(batch), steps, device))
    baseline_s, gainlora_s = statistics.median(plain), statistics.median(gated)
    return {
        "model": name,
        "branches": branches,
        "batch": BATCH,
        "sequence": SEQUENCE,
        "baseline_ms": 1000 * baseline_s,
        "gainlora_ms": 1000 * gainlora_s,
        "ratio": gainlora_s / baseline_s,
        "target": TARGET,
        "baseline_peak_mib": baseline_mib,
        "gainlora_peak_mib": gainlora_mib,
    }


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def markdown(rows: list[dict], skipped: Mapping[str, str]) -> str:
    """The rows as a markdown table (misses of the target marked), then the skipped models.

    :param rows: the rows of :func:`measure`.
    :param skipped: model name -> why it was skipped.
    """
    lines = [
        "| model | branches | baseline (ms) | GainLoRA (ms) | GainLoRA / baseline | target "
        "| baseline peak (MiB) | GainLoRA peak (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mark = "" if row["ratio"] <= row["target"] else " (missed)"
        lines.append(
            f"| {row['model']} | {row['branches']} | {row['baseline_ms']:.2f} | {row['gainlora_ms']:.2f} "
            f"| {row['ratio']:.2f}{mark} | <= {row['target']:.2f} "
            f"| {_mib(row['baseline_peak_mib'])} | {_mib(row['gainlora_peak_mib'])} |"
        )
    lines += [f"\nSkipped {name}: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def environment(device: torch.device) -> dict:
    """Versions, threads and device, recorded with the results.

    :param device: the device the benchmark runs on.
    """
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "machine": cpu_model(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def load_or_skip(name: str, load: Callable[[str], object], skipped: dict[str, str]) -> object | None:
    """``load(name)``, or ``None`` after recording in ``skipped`` (and printing) why it failed.

    :param name: model name.
    :param load: the loader.
    :param skipped: model name -> reason, filled in place.
    """
    try:
        return load(name)
    except Exception as error:  # any failure to load a model skips that model, not the benchmark
        skipped[name] = f"cannot be loaded ({type(error).__name__}: {error})"
        print(f"Skipping {name}: {skipped[name]}", file=sys.stderr)
        return None


def parse_args(
    argv: list[str] | None, description: str, out_stem: str, cases: tuple[ModelCase, ...]
) -> argparse.Namespace:
    """The options both GainLoRA benchmarks share.

    :param argv: command-line arguments (``sys.argv`` when ``None``).
    :param description: the parser's description.
    :param out_stem: name of the result files, quoted in the help.
    :param cases: the models and their default rounds and steps.
    """
    parser = argparse.ArgumentParser(description=description)
    names = [case.name for case in cases]
    defaults = {
        option: ", ".join(f"{case.name} {getattr(case, option)}" for case in cases) for option in ("rounds", "steps")
    }
    parser.add_argument("--models", default=",".join(names), help=f"comma-separated subset of {names}")
    parser.add_argument("--branches", default=",".join(map(str, BRANCHES)), help="comma-separated branch counts")
    parser.add_argument("--rounds", type=int, help=f"alternating blocks (default per model: {defaults['rounds']})")
    parser.add_argument("--steps", type=int, help=f"calls per block (default per model: {defaults['steps']})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="results/benchmarks", help=f"folder of {out_stem}.{{json,md}}")
    args = parser.parse_args(argv)
    args.models = args.models.split(",")
    unknown = sorted(set(args.models) - set(names))
    if unknown:
        parser.error(f"unknown models {unknown}; choose among {names}")
    args.branches = [int(count) for count in args.branches.split(",")]
    args.device = torch.device(args.device)
    return args


def write_results(out: str, stem: str, setting: dict, rows: list[dict], skipped: dict[str, str], table: str) -> None:
    """``{stem}.json`` (environment, rows, skipped models) and ``{stem}.md`` (the table) in ``out``; print the table.

    :param out: output folder, created if needed.
    :param stem: file name without extension.
    :param setting: the environment the benchmark ran in.
    :param rows: one dictionary per measurement.
    :param skipped: model name -> why it was skipped.
    :param table: the markdown table.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = {"environment": setting, "rows": rows, "skipped": skipped}
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (folder / f"{stem}.md").write_text(table)
    print(table)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module docstring).

    :param argv: command-line arguments (``sys.argv`` when ``None``).
    """
    args = parse_args(argv, __doc__.split("\n\n")[0], "gainlora_step_cost", CASES)
    rows: list[dict] = []
    skipped: dict[str, str] = {}
    for case in CASES:
        if case.name not in args.models:
            continue
        base = load_or_skip(case.name, load_model, skipped)
        if base is None:
            continue
        rounds, steps = args.rounds or case.rounds, args.steps or case.steps
        rows += [measure(case.name, base, n, rounds=rounds, steps=steps, device=args.device) for n in args.branches]
    setting = {**environment(args.device), "memory": memory_method(args.device)}
    write_results(args.out, "gainlora_step_cost", setting, rows, skipped, markdown(rows, skipped))


if __name__ == "__main__":
    main()
