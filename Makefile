# flowgraph: `make run` (set up + main job) and `make test` (set up + tests).
# The virtual environment lives in .venv/; torch 2.13.0 (CPU) is installed first so that the
# project's torch range is already satisfied and no multi-GB CUDA build is pulled.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/fmnist

.PHONY: setup system run test lint clean

setup: system $(STAMP)

# System packages (graphviz's `dot`, the Fashion-MNIST IDX files) when we can install them.
system:
	@if command -v dot >/dev/null 2>&1 && [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    graphviz dataset-fashion-mnist >/dev/null; \
	else echo "note: install graphviz and dataset-fashion-mnist (apt) for draw and the main job"; fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,draw,export]'
	touch $(STAMP)

# The main job: train the small DenseFlow on Fashion-MNIST (CPU, minutes), evaluate, sample.
run: setup
	$(VENV)/bin/flowgraph train specs/denseflow-fmnist.yaml --config specs/train/fmnist-cpu.yaml --out $(RUN_DIR) --overwrite
	$(VENV)/bin/flowgraph eval $(RUN_DIR)/final.pt --split test
	$(VENV)/bin/flowgraph sample $(RUN_DIR)/final.pt -n 64 --temperature 0.8 --seed 0 -o $(RUN_DIR)/samples.png
	@echo "samples: $(RUN_DIR)/samples.png"

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check flowgraph tests

clean:
	rm -rf $(VENV) runs .pytest_cache
