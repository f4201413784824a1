# Every target runs inside .venv, which `make venv` builds (torch==2.13.0 first, then requirements).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DS_ACCELERATOR ?= cpu
export DS_BUILD_OPS ?= 0
export PYTHONPATH := $(CURDIR)

.PHONY: venv test quickstart emoji-font clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

test: venv kernels
	$(PY) -m pytest -q tests

# Triton for the kernel tests (requirements-kernels.txt): optional for the model, installed for `make test`.
.PHONY: kernels
kernels: $(VENV)/.kernels-installed

$(VENV)/.kernels-installed: $(VENV)/.installed requirements-kernels.txt
	$(PY) -m pip install -q -r requirements-kernels.txt
	touch $@

quickstart: venv
	$(PY) scripts/quickstart.py

# The emoji dataset renders Noto Color Emoji (a Debian package); tests that need it skip without it.
emoji-font:
	@dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji >/dev/null)

clean:
	rm -rf $(VENV)
