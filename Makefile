# The README's two commands: `make demo` and `make test`. Each does all set-up itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.idu-installed
DEMO_OUT ?= demo_out

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml deploy/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/install.sh
	touch $(STAMP)

demo: install
	$(BIN)/python -m bench.demo --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench.bench_ply
	$(BIN)/python -m bench.bench_render

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
