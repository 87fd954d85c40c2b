# `make demo` and `make test` create .venv on first use and install everything into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch first, pinned to 2.14.1, the build pip finds offline where habactl is developed (newer: a multi-GB download).
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/habactl compress

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# Lint, formatting and types (settings in pyproject.toml); `ruff format` fixes formatting.
LINTED := habactl tests bench $(wildcard examples)
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy habactl

clean:
	rm -rf $(VENV) *.egg-info
