"""One instruction-tuning run: a LoRA method trained task by task on a language model, saved as JSON.

After each task the model answers the test prompts greedily (by default those of the tasks seen
so far, the paper's protocol; optionally all tasks), which gives one row of the score matrices
``a[l][i]`` (ROUGE-L and exact match, in percent). AP and FT (GainLoRA paper, see
:func:`~gpm_gainlora_experiments.common.metrics.ap_ft`) are computed on the benchmark's metric: ROUGE-L for SuperNI,
exact match for Long Sequence. For GainLoRA methods the record also holds the gate matrix
``G[i][j]``: the mean gate value of branch ``i`` on the test prompts of task ``j`` after the
last task.

Records are named ``<method>_seed<seed>.json``; a run whose record exists with the same
configuration is skipped (and its record returned), as in :mod:`gpm_gainlora_experiments.image.runner`.

Under ``torchrun`` (after :func:`~avalanche_gainlora.distributed.setup_distributed`) a run trains
with DDP: the global batch is split over the ranks, the model is re-wrapped at every task by
:class:`~avalanche_gainlora.distributed.DistributedLoRAPlugin`, the ranks generate answers for
disjoint shards of the test prompts and the scores are summed over ranks; rank 0 writes the record.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.benchmarks.scenarios import CLStream
from avalanche.evaluation.metrics import loss_metrics
from avalanche.logging import BaseLogger
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from avalanche_gainlora.branches import LoraBranches
from avalanche_gainlora.data import InstructionExample, instruction_benchmark
from avalanche_gainlora.distributed import DistributedHelper, DistributedLoRAPlugin
from avalanche_gainlora.generation_metrics import generation_metrics
from avalanche_gainlora.plugins import GainLoRAPlugin
from avalanche_gainlora.strategy import LanguageModelStrategy
from gpm_gainlora_experiments.common.checkpoints import checkpoint_path
from gpm_gainlora_experiments.common.devices import resolve_device
from gpm_gainlora_experiments.common.evaluation import experience_row
from gpm_gainlora_experiments.common.loggers import close_loggers, loggers_for_run
from gpm_gainlora_experiments.lm.instruction import InstructionTask
from gpm_gainlora_experiments.lm.checkpoints import RunProgress, resume_run, save_run_checkpoint
from gpm_gainlora_experiments.lm.methods import (
    MethodOptions,
    build_plugins,
    gate_plugin,
    get_method,
    is_encoder_decoder,
    resolved_options,
)
from gpm_gainlora_experiments.lm.models import load_model_and_tokenizer
from gpm_gainlora_experiments.common.metrics import ap_ft
from gpm_gainlora_experiments.common.provenance import process_commit, record_provenance, reset_cuda_peak, source_fingerprint
from gpm_gainlora_experiments.common.records import (
    check_output_folder,
    existing_record,
    read_record,
    record_lock,
    result_path,
    write_atomically,
)

ModelFactory = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]

#: Record keys of the scores and the Avalanche metric each comes from.
SCORES: dict[str, str] = {"rouge_l": "RougeL", "exact_match": "ExactMatch"}

#: The score AP and FT are computed on, by benchmark (GainLoRA paper).
PRIMARY_SCORE: dict[str, str] = {"superni": "rouge_l", "long_sequence": "exact_match"}

#: Packages whose versions go into every record, besides torch, Avalanche and this project.
LM_PACKAGES = ("transformers", "peft", "tokenizers", "gguf", "rouge-score")

#: Folders whose uncommitted changes mark the recorded commit dirty.
LM_CODE_DIRS = ("avalanche_gpm", "avalanche_gainlora", "gpm_gainlora_experiments")

_TEST_PREFIX = "_Exp/eval_phase/test_stream/"
_TRAIN_LOSS = "Loss_Epoch/train_phase/train_stream/"


@dataclass(frozen=True)
class LMSettings:
    """Protocol of a run: optimiser, LoRA, lengths, evaluation, and the methods' options.

    :param epochs: training epochs per task.
    :param batch_size: training mini-batch size.
    :param eval_batch_size: prompts per generation batch.
    :param lr: constant learning rate of AdamW (reference: 3e-4 for T5).
    :param weight_decay: AdamW weight decay (0: Adam).
    :param rank: LoRA rank of every branch (reference: 4 SuperNI, 8 Long Sequence).
    :param alpha: LoRA alpha (branches scaled by alpha / rank).
    :param dropout: LoRA dropout.
    :param target_modules: adapted layers; None is peft's default for the model (q and v projections).
    :param max_prompt_tokens: prompts keep their last tokens up to this budget.
    :param max_answer_tokens: training answers are cut to this budget (eos included).
    :param max_new_tokens: most tokens generated per answer.
    :param eval_all_tasks: after each task also evaluate the tasks not trained yet (full ``T x T``
        matrices); by default only the seen ones (the entries AP and FT use), the others are None.
    :param min_steps: train each task for at least this many optimizer steps: a task whose
        ``epochs`` give fewer gets more epochs (whole epochs, so possibly more steps); None: ``epochs``.
    :param max_grad_norm: clip the gradients' global norm before every step (Hugging Face's default
        1.0, which the official scripts use); None: no clipping.
    :param precision: ``"fp32"`` or ``"bf16"`` (autocast of training and generation, see
        :class:`~avalanche_gainlora.strategy.LanguageModelStrategy`).
    :param methods: options of the methods (see :class:`~gpm_gainlora_experiments.lm.methods.MethodOptions`).
    """

    epochs: int = 1
    batch_size: int = 8
    eval_batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.0
    rank: int = 4
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 32
    max_new_tokens: int = 32
    eval_all_tasks: bool = False
    min_steps: int | None = None
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    methods: MethodOptions = field(default_factory=MethodOptions)

    def replace(self, **changes: Any) -> LMSettings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self, method: str, *, encoder_decoder: bool) -> dict[str, Any]:
        """JSON-compatible protocol of one method's run, its own options only, defaults resolved.

        :param method: a registered method.
        :param encoder_decoder: the model's architecture (decides the default gate width).
        """
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "methods"}
        if record["target_modules"] is not None:
            record["target_modules"] = list(record["target_modules"])
        record["method_options"] = resolved_options(method, self.methods, encoder_decoder=encoder_decoder)
        return record


def tasks_fingerprint(tasks: Sequence[InstructionTask]) -> str:
    """SHA-256 of the tasks' names, prompts and answers: a record is reused only for the same data."""
    def rows(examples: Sequence[InstructionExample]) -> list[list[str]]:
        return [[e.prompt, e.answer, *e.alternatives] for e in examples]

    content = [[task.name, rows(task.train), rows(task.test)] for task in tasks]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()


def run_config(
    method: str,
    seed: int,
    tasks: Sequence[InstructionTask],
    model_name: str,
    settings: LMSettings,
    encoder_decoder: bool,
    data: Mapping[str, Any] | None,
    world_size: int = 1,
) -> dict[str, Any]:
    """The configuration stored in (and compared with) a run's record; ``world_size`` only above 1."""
    config = {
        "method": method,
        "seed": seed,
        "model": model_name,
        "encoder_decoder": encoder_decoder,
        "benchmark": _benchmark(tasks),
        "tasks": [task.name for task in tasks],
        "data": dict(data) if data is not None else None,
        "data_sha256": tasks_fingerprint(tasks),
        "settings": settings.to_dict(method, encoder_decoder=encoder_decoder),
    }
    if world_size > 1:
        config["world_size"] = world_size  # settings.batch_size stays the global batch
    return config


def run_lm(
    method: str,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[InstructionTask],
    model_name: str,
    settings: LMSettings | None = None,
    model_factory: ModelFactory | None = None,
    data: Mapping[str, Any] | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    loggers: Sequence[str] = (),
    log_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train and evaluate one (method, seed) on a task order and write its record.

    :param method: a registered method (see :data:`~gpm_gainlora_experiments.lm.methods.METHODS`).
    :param seed: seeds torch, numpy and random (LoRA initialisation, batch order).
    :param out_dir: folder of the JSON record (created if needed).
    :param tasks: the tasks in training order (e.g. from
        :func:`~gpm_gainlora_experiments.lm.instruction.load_tasks`).
    :param model_name: the model's name, stored in the record; also what the default factory loads.
    :param settings: the protocol (default :class:`LMSettings`).
    :param model_factory: returns a fresh model and its tokenizer (pad token set) for each run;
        default :func:`~gpm_gainlora_experiments.lm.models.load_model_and_tokenizer` of ``model_name``. A model
        is only built when the run is not skipped.
    :param data: how the tasks were loaded (order, caps, data seed), stored in the configuration.
    :param device: training device, e.g. ``"cpu"`` or ``"cuda"``.
    :param force: rerun and overwrite an existing record.
    :param progress: show a progress bar over tasks, and say when a run is skipped.
    :param loggers: Avalanche loggers by name (see :mod:`gpm_gainlora_experiments.common.loggers`), on
        the main process only: the training loss per epoch and iteration and the generation scores
        of every test experience, against the training iteration. They change no result.
    :param log_dir: folder of the runs' logs, one subfolder ``<method>_seed<seed>`` per run; default
        ``<out_dir>/logs``.
    :return: the record (also when it was read back from an existing file).
    :raises ValueError: for an unknown method, tasks of mixed benchmarks, or an existing record
        made with another configuration (rerun with ``force`` or use another ``out_dir``).
    """
    get_method(method)  # an unknown name fails here, listing the valid ones
    if not tasks:
        raise ValueError("no tasks to train on")
    settings = settings or LMSettings()
    benchmark_name = _benchmark(tasks)
    path = result_path(out_dir, method, seed)
    if model_factory is None:
        model_factory = functools.partial(load_model_and_tokenizer, model_name, device=device)
    world_size = DistributedHelper.world_size if DistributedHelper.is_distributed else 1

    check_output_folder(out_dir)  # a bad --out or --device found now, not after the training
    torch_device = resolve_device(device)
    # Held until the record is written: a second process on the same record stops at once.
    with record_lock(path, enabled=DistributedHelper.is_main_process):
        if path.exists() and not force:
            # The configuration depends on the model only through its name and architecture; take
            # the architecture from the record rather than building a model just to skip a run.
            recorded = read_record(path)["config"].get("encoder_decoder", False)
            config = run_config(method, seed, tasks, model_name, settings, bool(recorded), data, world_size)
            record = existing_record(path, config)
            if progress:
                tqdm.write(f"{method} seed {seed}: {path} exists, skipped (force to rerun)")
            return record

        commit = process_commit(LM_CODE_DIRS)  # the code that runs, even if the checkout moves on
        source = source_fingerprint(LM_CODE_DIRS)
        model, tokenizer = model_factory()
        model.to(torch_device)
        config = run_config(method, seed, tasks, model_name, settings, is_encoder_decoder(model), data, world_size)
        if world_size > 1:
            check_distributed_batch(settings.batch_size, world_size)

        RNGManager.set_random_seeds(seed)
        benchmark = instruction_benchmark(
            [task.train for task in tasks],
            [task.test for task in tasks],
            tokenizer,
            is_encoder_decoder=config["encoder_decoder"],
            max_prompt_tokens=settings.max_prompt_tokens,
            max_answer_tokens=settings.max_answer_tokens,
        )
        branches = LoraBranches(
            model,
            target_modules=settings.target_modules,
            rank=settings.rank,
            alpha=settings.alpha,
            dropout=settings.dropout,
        )
        plugins = build_plugins(method, branches, options=settings.methods)
        # One process: resume after the last task a killed run finished (DDP runs start afresh).
        checkpoint = checkpoint_path(out_dir, method, seed) if world_size == 1 else None
        if checkpoint is not None and force:
            checkpoint.unlink(missing_ok=True)
        resumed = resume_run(checkpoint, config, plugins) if checkpoint is not None else None
        resumed_after = None if resumed is None else resumed.tasks_done
        if world_size > 1:
            plugins.append(DistributedLoRAPlugin())  # after the method plugins, which add each task's branch
        run_loggers = loggers_for_run(
            loggers, out_dir=out_dir, log_dir=log_dir, run_name=f"{method}_seed{seed}", project=benchmark_name,
            resume=resumed is not None,
        )  # fmt: skip
        strategy = GenerationEvalStrategy(
            model=model,
            optimizer=torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay),
            tokenizer=tokenizer,
            train_mb_size=settings.batch_size // world_size,
            train_epochs=settings.epochs,
            eval_mb_size=settings.eval_batch_size,
            device=torch_device,
            plugins=plugins,
            evaluator=_evaluator(run_loggers),
            max_new_tokens=settings.max_new_tokens,
            max_grad_norm=settings.max_grad_norm,
            precision=settings.precision,
        )

        reset_cuda_peak(torch_device)
        primary = PRIMARY_SCORE[benchmark_name]
        label = f"{method} seed {seed}"
        with warnings.catch_warnings():
            # LoraBranches injects one peft adapter per task on purpose; peft warns from the second on.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            on_task_end = None if checkpoint is None else lambda done: save_run_checkpoint(checkpoint, config, done, plugins)
            done, timing = _train_and_evaluate(
                strategy, benchmark.train_stream, benchmark.test_stream, settings, label, primary, progress,
                resumed=resumed, on_task_end=on_task_end,
            )  # fmt: skip
        close_loggers(run_loggers)
        gates = gate_plugin(plugins)
        gate_values = None
        if gates is not None:  # GainLoRA methods only
            gate_values = gate_matrix(gates, benchmark.test_stream, torch_device, settings.eval_batch_size)

        matrices = done.matrices
        summary = {name: _ap_ft(matrix) for name, matrix in matrices.items()}
        names = [task.name for task in tasks]
        record = {
            "config": config,
            "primary_metric": primary,
            "score_matrix": matrices[primary],
            "ap": summary[primary]["ap"],
            "ft": summary[primary]["ft"],
            "score_matrices": matrices,
            "metrics": summary,
            "final_scores": {name: dict(zip(names, matrix[-1])) for name, matrix in matrices.items()},
            "gate_matrix": gate_values,
            "diagnostics": plugin_diagnostics(plugins),
            "train_loss": done.losses,
            "diverged_experiences": done.diverged,
            "wall_time_s": timing["wall_s"],
            "train_time_s": timing["train_s"],
            "eval_time_s": timing["eval_s"],
            "task_times_s": timing["per_task"],
            "resumed_after_task": resumed_after,
            **record_provenance(torch_device, commit, source, LM_PACKAGES),
        }
        if DistributedHelper.is_main_process:
            write_atomically(path, record)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        return record


def plugin_diagnostics(plugins: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """The per-task ``diagnostics`` of the method's plugins, by plugin class (InfLoRA's reachable
    input energy and basis sizes, GainLoRA's gate opening and gate bases)."""
    # A GainLoRA plugin runs its base method, whose diagnostics come first as in a plugin list.
    found = [q for p in plugins for q in ((p.base, p) if isinstance(p, GainLoRAPlugin) else (p,))]
    return {type(p).__name__: p.diagnostics for p in found if isinstance(getattr(p, "diagnostics", None), list)}


def epochs_for(num_examples: int, settings: LMSettings) -> int:
    """Epochs of one task: ``settings.epochs``, or more when that gives fewer than ``min_steps`` steps.

    :param num_examples: the task's training examples.
    :param settings: the protocol (its batch size is the global batch under DDP).
    """
    if settings.min_steps is None:
        return settings.epochs
    steps_per_epoch = math.ceil(num_examples / settings.batch_size)
    return max(settings.epochs, math.ceil(settings.min_steps / steps_per_epoch))


def check_distributed_batch(batch_size: int, world_size: int) -> None:
    """Fail early when the global batch cannot be split evenly over the ranks."""
    if batch_size % world_size:
        raise ValueError(
            f"the batch size {batch_size} does not split over {world_size} processes: "
            f"use a multiple of {world_size} (it is the global batch, each rank takes batch / world size)"
        )


class GenerationEvalStrategy(LanguageModelStrategy):
    """:class:`~avalanche_gainlora.strategy.LanguageModelStrategy` whose evaluation only generates.

    The scores come from greedy generation (the generation metrics call ``generate`` after each
    evaluation iteration); Avalanche's evaluation loop would also run a teacher-forced forward
    pass and loss on every test batch, which nobody reads here and which costs about as much as
    the generation on a CPU. Evaluation skips both: ``mb_output`` is None and the loss 0.
    """

    def forward(self) -> Any:
        return super().forward() if self.is_training else None

    def criterion(self) -> torch.Tensor:
        return super().criterion() if self.is_training else torch.zeros((), device=self.device)


@torch.no_grad()
def gate_matrix(
    plugin: GainLoRAPlugin, test_stream: CLStream, device: torch.device, batch_size: int
) -> list[list[float]]:
    """``G[i][j]``: mean value of gate ``i`` over the test prompts of task ``j``.

    The gates see what they see at generation time: the pooled embeddings of the prompts.

    :param plugin: the trained GainLoRA plugin.
    :param test_stream: one experience per task.
    :param device: where the model is.
    :param batch_size: prompts per pass.
    :return: a ``num_gates x num_tasks`` matrix (list of rows).
    """
    columns = []
    for experience in test_stream:
        dataset = experience.dataset.eval()
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)
        values = []
        for inputs, *_ in loader:
            pooled = plugin.router.pooled(
                inputs["input_ids"].to(device), inputs["attention_mask"].to(device), inputs["labels"].to(device)
            )
            values.append(plugin.gates(pooled.to(plugin.gates.current.key.dtype)))
        columns.append(torch.cat(values).mean(dim=0))
    return torch.stack(columns, dim=1).double().cpu().tolist()


def _benchmark(tasks: Sequence[InstructionTask]) -> str:
    benchmarks = sorted({task.benchmark for task in tasks})
    if len(benchmarks) != 1:
        raise ValueError(f"tasks of several benchmarks {benchmarks} in one order; run them separately")
    if benchmarks[0] not in PRIMARY_SCORE:
        raise ValueError(f"unknown benchmark {benchmarks[0]!r}; expected one of {sorted(PRIMARY_SCORE)}")
    return benchmarks[0]


def _evaluator(loggers: Sequence[BaseLogger] = ()) -> EvaluationPlugin:
    """Training loss per epoch (and per iteration when logged) and the generation scores of each
    test experience."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(
            loss_metrics(minibatch=bool(loggers), epoch=True),
            *generation_metrics(stream=False),
            loggers=list(loggers),
        )


def _train_and_evaluate(
    strategy: LanguageModelStrategy,
    train_stream: CLStream,
    test_stream: CLStream,
    settings: LMSettings,
    label: str,
    primary: str,
    progress: bool,
    *,
    resumed: RunProgress | None = None,
    on_task_end: Callable[[RunProgress], None] | None = None,
) -> tuple[RunProgress, dict[str, Any]]:
    """Train task by task, generating answers for the test prompts after each.

    :param resumed: what a killed run finished (its tasks are skipped), or None.
    :param on_task_end: called with the progress after every task (the runner's checkpoint).
    :return: the progress of the whole run (score matrices by score name, None where not
        evaluated; last-epoch losses; diverged tasks) and the timings.
    """
    num_tasks = len(train_stream)
    done = resumed or RunProgress(matrices={name: [] for name in SCORES})
    matrices, losses, per_task = done.matrices, done.losses, done.per_task
    start = time.perf_counter() - sum(t["train_s"] + t["eval_s"] for t in per_task)
    bar = tqdm(total=num_tasks, initial=done.tasks_done, desc=label, unit="task", disable=not progress)
    for index, experience in enumerate(train_stream):
        if index < done.tasks_done:
            continue
        train_start = time.perf_counter()
        strategy.train_epochs = epochs_for(len(experience.dataset), settings)
        trained = strategy.train(experience)
        train_s = time.perf_counter() - train_start
        loss = _last_loss(trained)
        if loss is not None and not math.isfinite(loss):
            # Kept out of the record as None (JSON has no NaN); the scores of such a run mean little.
            done.diverged.append(index)
            warnings.warn(
                f"{label}: training diverged on task {index} (counted from 0), the loss is {loss}; "
                "lower the learning rate (or O-LoRA's lambda1)",
                RuntimeWarning,
            )
            loss = None
        losses.append(loss)
        evaluated = num_tasks if settings.eval_all_tasks else index + 1
        eval_start = time.perf_counter()
        results = strategy.eval(test_stream[:evaluated])
        eval_s = time.perf_counter() - eval_start
        for name, metric in SCORES.items():
            row = experience_row(results, metric + _TEST_PREFIX, evaluated)
            matrices[name].append(row + [None] * (num_tasks - evaluated))
        per_task.append({"train_s": train_s, "eval_s": eval_s, "epochs": strategy.train_epochs})
        seen = matrices[primary][-1][: index + 1]
        loss = float("nan") if losses[-1] is None else losses[-1]
        bar.set_postfix({primary: f"{sum(seen) / len(seen):.1f}", "loss": f"{loss:.3f}"})
        bar.update()
        if on_task_end is not None:
            on_task_end(done)
    bar.close()
    timing = {
        "wall_s": time.perf_counter() - start,
        "train_s": sum(t["train_s"] for t in per_task),
        "eval_s": sum(t["eval_s"] for t in per_task),
        "per_task": per_task,
    }
    return done, timing


def _last_loss(metrics: Mapping[str, Any]) -> float | None:
    values = [float(value) for key, value in metrics.items() if key.startswith(_TRAIN_LOSS)]
    return values[-1] if values else None


def _ap_ft(matrix: Sequence[Sequence[float | None]]) -> dict[str, float | None]:
    """AP and FT of a matrix with None above the diagonal; FT is None for a single task."""
    ap, ft = ap_ft([[float("nan") if value is None else value for value in row] for row in matrix])
    return {"ap": ap, "ft": None if ft != ft else ft}
