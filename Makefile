# Two commands do all set-up: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# bench/drift_bench.py's reference detector, without its numpy<2 pin (setup.cfg's dev extra says why)
ALIBI_DETECT := alibi-detect==0.13.0

.PHONY: demo test lint typecheck unit browser bench soak clean

$(STAMP): setup.cfg pyproject.toml setup.py $(wildcard edge_agent/native/*.c)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "edgefleet needs Python 3.11 or newer, found " + sys.version.split()[0]' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[hub,dev,tf,litert,postgres]'
	$(BIN)/python -m pip install --quiet --no-deps '$(ALIBI_DETECT)'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgehub demo

lint: $(STAMP)
	$(BIN)/ruff check edge_agent cloud_hub converters firmware_configs tests bench
	$(BIN)/ruff format --check edge_agent cloud_hub converters firmware_configs tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The dashboard tests drive Debian's chromium through playwright; install it where it is missing
# and apt-get can (root, or sudo without a password). Elsewhere those tests skip, saying why.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then APT="apt-get"; \
	  elif command -v apt-get >/dev/null && sudo -n true 2>/dev/null; then APT="sudo apt-get"; fi; \
	  if [ -n "$$APT" ]; then \
	    $$APT update -qq && DEBIAN_FRONTEND=noninteractive $$APT install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and apt-get is not usable here: the browser tests will skip"; fi; \
	fi

# the test files spread over the machine's cores (at most 4 workers: each starts its own brokers
# and some train TensorFlow models); a file's tests stay on one worker, with its module fixtures
unit: $(STAMP) browser
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

test: lint typecheck unit

# every bench/*_bench.py with --json, collected into BENCHMARKS.md (takes several minutes)
bench: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/make_benchmarks.py --out BENCHMARKS.md

# a simulated fleet, real agent processes and the hub under faults; SOAK_MINUTES=10 by default
SOAK_MINUTES ?= 10
soak: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python -m cloud_hub.harness.soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .cache
