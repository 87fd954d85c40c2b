# `make demo` and `make test` create .venv on first use and install everything into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-cpus lint bench clean

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

# The numerical tests again under each CPU kernel level PyTorch, oneDNN and MKL can be held
# to, so one machine checks what another CPU kind would run (docs/reproducibility.md).
NUMERICAL := tests/test_golden.py tests/test_codecs_vectors.py tests/test_distributed.py \
	tests/test_distributed_mtt.py tests/test_distributed_faults.py tests/test_distill.py \
	tests/test_representations_end_to_end.py tests/test_objectives_dc.py tests/test_objectives_mtt.py \
	tests/test_stability.py tests/test_examples.py tests/test_recipe.py tests/test_evaluate.py
ISA_default := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2
ISA_avx2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ISA_avx512 := ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=ALL MKL_ENABLE_INSTRUCTIONS=AVX512
test-cpus: $(STAMP)
	$(foreach level,default avx2 avx512,$(ISA_$(level)) $(VENV)/bin/python -m pytest -q $(NUMERICAL) &&) true

# Lint, formatting and types (settings in pyproject.toml); `ruff format` fixes formatting.
LINTED := habactl tests bench $(wildcard examples)
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy habactl

clean:
	rm -rf $(VENV) *.egg-info
