"""``LanguageModelStrategy``: Avalanche training and evaluation of Hugging Face language models."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from avalanche_gainlora.data import (
    GENERATION_KEYS,
    TRAINING_KEYS,
    BatchInputs,
    InstructionCollator,
    check_tokenizer,
)
from avalanche_gainlora.generation_metrics import generation_metrics


class LanguageModelLoss:
    """Criterion that returns the loss the Hugging Face model computed from ``labels``.

    Called like any Avalanche criterion, ``criterion(model_output, targets)`` (EWC's
    importance pass calls ``strategy._criterion`` this way); the targets, reference strings,
    are not needed.
    """

    def __call__(self, output: ModelOutput, targets: Tensor) -> Tensor:
        """The model's loss.

        :param output: the model output of a forward pass with ``labels``.
        :param targets: the mini-batch targets (unused).
        :return: the scalar loss.
        """
        return output.loss


Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def default_lm_evaluator() -> EvaluationPlugin:
    """Loss, exact match and ROUGE-L per experience and stream, printed by an interactive logger."""
    return EvaluationPlugin(
        loss_metrics(epoch=True, experience=True, stream=True),
        *generation_metrics(),
        loggers=[InteractiveLogger()],
    )


class LanguageModelStrategy(SupervisedTemplate):
    """Fine-tunes a causal (LLaMA, GPT-2) or sequence-to-sequence (T5) Hugging Face model.

    Works on mini-batches built by :func:`~avalanche_gainlora.data.instruction_dataset`
    (see :mod:`avalanche_gainlora.data` for their format). The forward pass calls
    ``model(input_ids=..., attention_mask=..., labels=...)`` with keyword arguments only, and
    the criterion is the loss the model returns. :meth:`generate` decodes greedy answers for
    the generation metrics.

    The strategy registers a forward pre-hook on the model that turns a positional
    :class:`~avalanche_gainlora.data.BatchInputs` into those keyword arguments, so Avalanche
    plugins that call ``model(mb_x)`` (EWC's importance pass, LwF) work unchanged. The hook
    runs before every other forward pre-hook.

    ``precision="bf16"`` runs the training forward pass and generation under
    ``torch.autocast(dtype=torch.bfloat16)`` (CPU or CUDA); parameters, gradients and optimizer
    states stay float32, and so do the plugins' statistics passes, bases and projections, which run
    outside the strategy's forward (GainLoRA's gates are computed in float32 too).
    """

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        optimizer: Optimizer,
        tokenizer: PreTrainedTokenizerBase,
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device = "cpu",
        plugins: Sequence[SupervisedPlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] = default_lm_evaluator,
        max_new_tokens: int = 50,
        eval_every: int = -1,
        reset_optimizer_state: bool = True,
        precision: Precision = "fp32",
        max_grad_norm: float | None = None,
        **base_kwargs: Any,
    ):
        """Init.

        :param model: a Hugging Face causal or encoder-decoder language model.
        :param optimizer: the optimizer.
        :param tokenizer: the tokenizer the datasets were built with; it needs a pad token.
        :param train_mb_size: the train mini-batch size.
        :param train_epochs: the number of training epochs per experience.
        :param eval_mb_size: the eval mini-batch size (default: ``train_mb_size``).
        :param device: the device to use.
        :param plugins: further plugins.
        :param evaluator: instance of EvaluationPlugin for logging and metric computations.
        :param max_new_tokens: most tokens generated per answer.
        :param eval_every: the frequency of the calls to `eval` inside the training loop.
        :param reset_optimizer_state: start every experience with a fresh optimizer state (moments,
            step counts), as the GainLoRA code's new trainer per task does; False keeps Avalanche's
            default of carrying it over (it matters for parameters trained on several tasks, e.g.
            SeqLoRA's single branch).
        :param precision: ``"fp32"`` or ``"bf16"`` (autocast of the training forward and of generation).
        :param max_grad_norm: clip the gradients' global norm to this before every optimizer step
            (Hugging Face's Trainer, which the official GainLoRA scripts use, clips at 1.0); None: no clipping.
        :param base_kwargs: any additional :class:`~avalanche.training.templates.SupervisedTemplate` arguments.
        """
        check_tokenizer(tokenizer)
        if getattr(model, "config", None) is None:
            raise TypeError(f"model must be a Hugging Face PreTrainedModel with a `config`, got {type(model).__name__}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: generate at least one token")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be a positive number or None (no clipping), got {max_grad_norm!r}")
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=LanguageModelLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.reset_optimizer_state = reset_optimizer_state
        self.precision: Precision = precision
        self.max_grad_norm = max_grad_norm
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        if _batch_as_keywords not in model._forward_pre_hooks.values():  # a model reused by several strategies
            model.register_forward_pre_hook(_batch_as_keywords, with_kwargs=True, prepend=True)

    def check_model_and_optimizer(self, reset_optimizer_state: bool = False, **kwargs: Any) -> None:
        super().check_model_and_optimizer(
            reset_optimizer_state=reset_optimizer_state or self.reset_optimizer_state, **kwargs
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of the training forward pass and of generation."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def forward(self) -> ModelOutput:
        """The model output on the current mini-batch, loss included."""
        with self.autocast():
            # Keyword arguments only: other plugins' forward pre-hooks read them by name.
            return self.model(**{key: self.mb_x[key] for key in TRAINING_KEYS})

    def optimizer_step(self) -> None:
        """Clip the gradients' global norm (when ``max_grad_norm`` is set), then step."""
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        super().optimizer_step()

    @torch.no_grad()
    def generate(self, inputs: Mapping[str, Tensor]) -> list[str]:
        """Greedy answers to the prompts of a mini-batch.

        :param inputs: mini-batch inputs with ``gen_input_ids`` and ``gen_attention_mask``.
        :return: one decoded answer per prompt, special tokens and surrounding whitespace removed.
        """
        prompt_ids = inputs["gen_input_ids"].to(self.device)
        was_training = self.model.training
        if was_training:  # switching walks every module: skip it in evaluation, where the model is in eval mode
            self.model.eval()
        try:
            with self.autocast():
                output = self.model.generate(
                    input_ids=prompt_ids,
                    attention_mask=inputs["gen_attention_mask"].to(self.device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=self.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
        finally:
            if was_training:
                self.model.train()
        if not self.is_encoder_decoder:
            # A decoder-only model returns the (left padded) prompt before its answer.
            output = output[:, prompt_ids.shape[1] :]
        return [answer.strip() for answer in self.tokenizer.batch_decode(output, skip_special_tokens=True)]

    def make_train_dataloader(
        self,
        num_workers: int = 0,
        shuffle: bool = True,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        """Task-balanced training loader that always collates with the dataset's ``collate_fn``.

        Avalanche 0.6.0 builds a plain ``DataLoader`` without the dataset's collate function
        for experiences without ``task_labels`` (upstream issue 1531), which cannot pad text.

        :param num_workers: number of data loading workers.
        :param shuffle: shuffle the examples.
        :param pin_memory: pin memory (default: when training on CUDA).
        :param persistent_workers: keep workers between epochs.
        :param drop_last: drop the last incomplete mini-batch.
        :param kwargs: further arguments of ``train``, ignored.
        """
        loader_args = self._obtain_common_dataloader_parameters(
            batch_size=self.train_mb_size,
            num_workers=num_workers,
            shuffle=shuffle,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            drop_last=drop_last,
        )
        self.dataloader = TaskBalancedDataLoader(self.adapted_dataset, oversample_small_groups=True, **loader_args)

    def make_eval_dataloader(
        self,
        num_workers: int = 0,
        shuffle: bool = False,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        **kwargs: Any,
    ) -> None:
        """Evaluation loader; on several processes, rank ``r`` takes examples ``r, r + world_size, ...``.

        Avalanche's evaluation loader pads every rank's shard to the same length with repeated
        examples (``DistributedSampler``), which would count those twice; this shard has no padding,
        so the generation metrics, summed over ranks, score every example exactly once.

        :param num_workers: number of data loading workers.
        :param shuffle: shuffle the examples.
        :param pin_memory: pin memory (default: when evaluating on CUDA).
        :param persistent_workers: keep workers between experiences.
        :param kwargs: further arguments of ``eval``, ignored.
        """
        dataset = self.adapted_dataset
        if DistributedHelper.is_distributed:
            dataset = dataset.subset(range(DistributedHelper.rank, len(dataset), DistributedHelper.world_size))
        loader_args = self._obtain_common_dataloader_parameters(
            batch_size=self.eval_mb_size,
            num_workers=num_workers,
            shuffle=shuffle,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self.dataloader = DataLoader(dataset, collate_fn=dataset.collate_fn, **loader_args)

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        """Set ``adapted_dataset`` and check that it fits the model."""
        super().train_dataset_adaptation(**kwargs)
        self._check_adapted_dataset()

    def eval_dataset_adaptation(self, **kwargs: Any) -> None:
        """Set ``adapted_dataset`` and check that it fits the model."""
        super().eval_dataset_adaptation(**kwargs)
        self._check_adapted_dataset()

    def _unpack_minibatch(self) -> None:
        # The inputs are a mapping, which the base implementation cannot move.
        self.mbatch = [_move_tensors(part, self.device) for part in self.mbatch]
        expected = (*TRAINING_KEYS, *GENERATION_KEYS)
        if not isinstance(self.mb_x, Mapping) or any(key not in self.mb_x for key in expected):
            raise ValueError(
                f"mini-batch inputs must be a mapping with keys {expected}: "
                "build the datasets with avalanche_gainlora.data.instruction_dataset"
            )

    def _check_adapted_dataset(self) -> None:
        dataset = self.adapted_dataset
        name = f"experience {self.experience.current_experience}"
        if len(dataset) == 0:
            raise ValueError(f"{name} has no examples: remove it from the stream or give it examples")
        if not hasattr(dataset, "targets_task_labels"):
            raise ValueError(
                f"{name} has no task labels (`targets_task_labels`): "
                "build its dataset with avalanche_gainlora.data.instruction_dataset"
            )
        collate = dataset.collate_fn
        if isinstance(collate, InstructionCollator) and collate.is_encoder_decoder != self.is_encoder_decoder:
            raise ValueError(
                f"{name} was built with is_encoder_decoder={collate.is_encoder_decoder} but the model has "
                f"is_encoder_decoder={self.is_encoder_decoder}: rebuild the data with the model's value"
            )


def _batch_as_keywords(
    module: Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook: ``model(batch_inputs)`` becomes ``model(input_ids=..., attention_mask=..., labels=...)``."""
    if len(args) == 1 and not kwargs and isinstance(args[0], BatchInputs):
        return (), {key: args[0][key] for key in TRAINING_KEYS}
    return None


def _move_tensors(part: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors of a mapping, to ``device``; anything else stays."""
    if isinstance(part, Tensor):
        return part.to(device, non_blocking=True)
    if isinstance(part, Mapping):
        return BatchInputs(part).to(device, non_blocking=True)
    return part
