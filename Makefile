# Two commands: `make serve` and `make test`. Each sets up .venv on a fresh machine first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: install test lint typecheck serve bench bench-compare clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# With no MODEL, `unmask serve` serves the embedded default: the trained
# server/checkpoints/llada2 (training/README.md), shipped inside the package.
serve: install
	$(BIN)/unmask serve $(MODEL) $(ARGS)

bench: install
	$(BIN)/python benchmarks/engine_cpu.py

# Tiny LLaDA2 vs its Ling-2.0 AR twin, both served locally: table, JSON and charts.
COMPARE_OUT ?= benchmarks/results/compare
bench-compare: install
	$(BIN)/unmask bench compare --out $(COMPARE_OUT) --plot $(COMPARE_OUT) \
		--result-json $(COMPARE_OUT)/report.json $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
