# Two commands: `make serve` and `make test`. Each sets up .venv on a fresh machine first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: install test lint serve bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The HTTP server lands with the API issue; until then `make serve` runs the offline engine on
# the default tiny checkpoint so a fresh machine shows it working end to end.
DEFAULT_MODEL ?= $(HOME)/.cache/unmask/tiny-llada2
serve: install
	test -f $(DEFAULT_MODEL)/config.json || $(BIN)/unmask make-tiny-model $(DEFAULT_MODEL) --peaky
	$(BIN)/unmask generate $(DEFAULT_MODEL) --chat "Write a Python function that adds two numbers."

bench: install
	$(BIN)/python benchmarks/engine_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
