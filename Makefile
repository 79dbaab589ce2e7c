# Every target creates/uses .venv and installs what it needs, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean browsers

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q "torch>=2.4"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmstack quickstart

test: $(STAMP) browsers
	$(PY) -m pytest -q

test-all: $(STAMP) browsers
	$(PY) -m pytest -q -m "slow or not slow"

# The dashboard's browser tests drive Debian's chromium through Playwright (`playwright install` downloads
# browsers, which a closed network refuses). Installed once, only as root; without it those tests skip.
browsers:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will be skipped"; fi

# toolcall_accuracy.py measures the demo's SFT model: the demo makes it where it is missing.
DEMO_MODEL := runs/quickstart/sft/final

$(DEMO_MODEL): | $(STAMP)
	$(VENV)/bin/lmstack quickstart

bench: $(STAMP) | $(DEMO_MODEL)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
