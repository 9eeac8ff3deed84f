# Set-up and entry points. `make test` is the command CI runs (.ci/run calls it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Machines without an NVIDIA GPU get the small CPU build of PyTorch; GPU machines keep pip's default
# (CUDA) build. Override with e.g. `make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"`.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
EXTRAS ?= all,test

.PHONY: venv demo test test-slow bench clean

$(BIN)/dynslice: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/dynslice

demo: venv
	$(BIN)/dynslice assets fetch
	$(BIN)/dynslice run compress $(ARGS)

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

# every benchmark (the quality one takes the longest), then docs/BENCHMARKS.md from their saved results
bench: venv
	$(BIN)/dynslice assets fetch
	$(BIN)/python bench/slice_speed.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/recover.py --steps 100
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) .pytest_cache
