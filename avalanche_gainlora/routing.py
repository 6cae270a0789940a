"""Compute the gates from a model's input tokens at the start of every forward pass.

The gates see the *prompt*: the token embeddings of the input, padding excluded, and for
decoder-only models also excluding tokens that carry a label (the answer appended for training),
so that a training batch and the generation call on the same prompt get the same gate values.

* Encoder-decoder models: a forward pre-hook on the encoder, which ``generate`` runs once.
* Decoder-only models: a forward pre-hook on the model. A call that continues a key/value cache
  (generation after the first step) keeps the gates of the prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from avalanche_gainlora.branches import BranchWeights
from avalanche_gainlora.gates import GateBank, masked_mean

#: Label value that marks tokens outside the loss (Hugging Face convention).
IGNORE_INDEX = -100


def pooled_prompt_embeddings(
    embedding: nn.Module,
    input_ids: Tensor | None,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
) -> Tensor:
    """Mean input token embedding over the prompt tokens of each sample, ``(B, d)``.

    :param embedding: the model's input embedding (``model.get_input_embeddings()``).
    :param input_ids: ``(B, L)`` token ids (or ``None`` with ``inputs_embeds``).
    :param attention_mask: 1 for real tokens, 0 for padding; all ones when ``None``.
    :param labels: ``(B, L)`` labels aligned with ``input_ids`` (decoder-only training); tokens
        with a label other than -100 are not part of the prompt and are left out.
    :param inputs_embeds: embeddings given instead of ``input_ids``.
    """
    with torch.no_grad():
        embeddings = embedding(input_ids) if inputs_embeds is None else inputs_embeds
        mask = torch.ones(embeddings.shape[:2], device=embeddings.device)
        if attention_mask is not None:
            mask = mask * attention_mask.to(mask)
        if labels is not None and labels.shape == mask.shape:
            prompt = mask * (labels == IGNORE_INDEX).to(mask)
            # A sample whose every token is labelled has no prompt: fall back to all its tokens.
            mask = torch.where(prompt.sum(1, keepdim=True) > 0, prompt, mask)
        return masked_mean(embeddings.detach(), mask)


def _argument(name: str, position: int, args: tuple, kwargs: dict[str, Any]) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _continues_cache(input_ids: Tensor | None, attention_mask: Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Whether this call only appends tokens to a cached prompt (a decoding step of ``generate``)."""
    if input_ids is not None and attention_mask is not None and attention_mask.shape[-1] > input_ids.shape[-1]:
        return True
    for name in ("past_key_values", "cache"):  # the argument was renamed in transformers 5
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length") and int(cache.get_seq_length()) > 0:
            return True
    return False


class GateRouter:
    """Keeps ``weights.values`` equal to the gate values of the batch being processed.

    :param model: a Hugging Face model (``config.is_encoder_decoder`` decides where to hook).
    :param gates: the task gates.
    :param weights: the per-sample branch weights read by the adapted layers.
    """

    def __init__(self, model: nn.Module, gates: GateBank, weights: BranchWeights):
        self.model = model
        self.gates = gates
        self.weights = weights
        encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self._anchor = model.get_encoder() if encoder_decoder else model
        self._labels_in_input = not encoder_decoder
        self._handle: RemovableHandle | None = None

    def attach(self) -> None:
        """Start routing (idempotent)."""
        if self._handle is None:
            self._handle = self._anchor.register_forward_pre_hook(self._route, with_kwargs=True)

    def detach(self) -> None:
        """Stop routing; every branch then weighs 1."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.weights.values = None

    def _route(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        input_ids = _argument("input_ids", 0, args, kwargs)
        attention_mask = _argument("attention_mask", 1, args, kwargs)
        inputs_embeds = kwargs.get("inputs_embeds")
        if input_ids is None and inputs_embeds is None:
            return  # e.g. a seq2seq call that reuses precomputed encoder outputs
        if _continues_cache(input_ids, attention_mask, kwargs):
            return
        pooled = self.pooled(input_ids, attention_mask, kwargs.get("labels"), inputs_embeds)
        key = self.gates.current.key
        # Gates in their own precision even under bf16 autocast: the constraints that keep old
        # tasks' gate values are exact only up to the arithmetic's round-off.
        with torch.autocast(key.device.type, enabled=False):
            self.weights.values = self.gates(pooled.to(key.dtype))

    def pooled(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """The gates' input for a batch of model inputs: the pooled prompt embedding of each sample.

        ``labels`` mark the answer tokens to leave out for decoder-only models; an encoder-decoder
        model's labels belong to the decoder and are ignored.
        """
        return pooled_prompt_embeddings(
            self.model.get_input_embeddings(),
            input_ids,
            attention_mask,
            labels if self._labels_in_input else None,
            inputs_embeds,
        )
