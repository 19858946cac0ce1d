# gptjax: `make train` trains the default experiment and prints samples; `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# An NVIDIA GPU gets CUDA jaxlib and the full-size model; otherwise nanoGPT's CPU variant.
ACCEL := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
comma := ,
# make train needs the core package (+ CUDA jaxlib on a GPU); make test also the PyTorch/HF baselines
# (torch==2.13.0: pip takes a local CPU wheel when the machine has one), HF tokenizers and the image extras.
TRAIN_EXTRAS := $(if $(filter gpu,$(ACCEL)),cuda)
TEST_EXTRAS := test,torch,tokenizers,art,tfds,parquet
CONFIG ?= configs/shakespeare_char.py$(if $(filter cpu,$(ACCEL)),:cpu)
WORKDIR ?= runs/shakespeare_char_$(ACCEL)
# The shared data folder beside a checkout, when there is one (CI); otherwise the loaders download.
export GPTJAX_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data))

.PHONY: train test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

$(BIN)/.installed-train: setup.py | $(BIN)/python
	$(BIN)/pip install --quiet -e '.$(if $(TRAIN_EXTRAS),[$(TRAIN_EXTRAS)])'
	touch $@

$(BIN)/.installed-test: setup.py | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $@

train: $(BIN)/.installed-train
	$(BIN)/python scripts/train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(BIN)/python scripts/sample.py --workdir=$(WORKDIR) --num_samples=2 --max_new_tokens=400

test: $(BIN)/.installed-test lint
	$(BIN)/python -m pytest -q -n 2

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs build *.egg-info
