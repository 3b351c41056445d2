# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv with every version pinned.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test fix lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,deploy,ray,pretrain]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/imagerec demo

# The report tests open report.html in Debian's headless Chromium, installed here: no test tool downloads a browser.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) apt-get install -y --no-install-recommends chromium chromium-driver
$(CHROMIUM):
	$(APT_INSTALL) || ($(SUDO) apt-get update && $(APT_INSTALL))

test: $(STAMP) $(CHROMIUM)
	IMAGEREC_BROWSER=$(CHROMIUM) HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

fix: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/engine_overhead.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/accuracy.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/cpu_precision.py

clean:
	rm -rf $(VENV) runs .pytest_cache
