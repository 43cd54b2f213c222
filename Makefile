# Everything a fresh clone needs: `make test`, `make demo`.
# GPU users: make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Install torch first and on its own: a bare `torch` requirement with nothing installed
# would pull the CUDA build and several GB of packages on a CPU-only machine.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check softsae_lens tests benchmarks examples

bench: install
	$(PY) benchmarks/bench_soft_topk.py

clean:
	rm -rf $(VENV) out .pytest_cache
