# Two commands are the contract: `make bench` and `make test`. Both set up .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.leanvision-installed
PYTEST_ARGS ?=
# The oldest supported transformers, diffusers and timm (pyproject's lower bounds) in a second
# venv layered on the first: it reuses .venv's torch and everything else it does not pin.
OLDEST_VENV ?= .venv-oldest
OLDEST_BIN := $(OLDEST_VENV)/bin
OLDEST_STAMP := $(OLDEST_VENV)/.leanvision-installed
# the tests that touch transformers, diffusers or timm
OLDEST_TESTS ?= tests/compat tests/vlm tests/diffusion tests/vision tests/bench tests/testing

export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: setup setup-oldest test test-oldest bench demo lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[video,demo,dev,train]"
	touch $(STAMP)

setup: $(STAMP)

$(OLDEST_STAMP): $(STAMP)
	rm -rf $(OLDEST_VENV)
	$(BIN)/python -m venv $(OLDEST_VENV)
	base=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	own=$$($(OLDEST_BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	echo "import site; site.addsitedir('$$base')" > "$$own/zz_leanvision_base_venv.pth"
	$(OLDEST_BIN)/python -m pip install --quiet --disable-pip-version-check \
		$$($(BIN)/python -m leanvision.compat.versions --pins)
	touch $(OLDEST_STAMP)

setup-oldest: $(OLDEST_STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-oldest: setup-oldest
	$(OLDEST_BIN)/python -m leanvision.compat.versions --check
	$(OLDEST_BIN)/python -m pytest $(OLDEST_TESTS) $(PYTEST_ARGS)

bench: setup
	$(BIN)/leanvision bench --plot bench-results/bench.png

demo: setup
	$(BIN)/leanvision demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(OLDEST_VENV) bench-results .pytest_cache .ruff_cache
