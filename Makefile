# Every target runs inside .venv, which `make venv` builds (torch==2.13.0 first, then requirements).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export DS_ACCELERATOR ?= cpu
export DS_BUILD_OPS ?= 0
export PYTHONPATH := $(CURDIR)

.PHONY: venv test quickstart demo emoji-font cjk-font chromium clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The web demo's extras (gradio, playwright), apart so training machines need not install them.
$(VENV)/.installed-demo: $(VENV)/.installed requirements-demo.txt
	$(PY) -m pip install -q -r requirements-demo.txt
	touch $@

test: venv $(VENV)/.installed-demo $(VENV)/.installed-kernels
	$(PY) -m pytest -q tests

# Triton for the kernel tests (requirements-kernels.txt): optional for the model, installed for `make test`.
$(VENV)/.installed-kernels: $(VENV)/.installed requirements-kernels.txt
	$(PY) -m pip install -q -r requirements-kernels.txt
	touch $@

quickstart: venv
	@$(MAKE) --no-print-directory cjk-font || \
	  echo "warning: could not install fonts-noto-cjk; Chinese prompts in the overview will show as boxes"
	$(PY) scripts/quickstart.py

# The web page over the quick start's model; other checkpoints: make demo DEMO_FLAGS="--load runs/gpt".
demo: $(VENV)/.installed-demo
	$(PY) web_demo.py $(DEMO_FLAGS)

# The emoji dataset renders Noto Color Emoji (a Debian package); tests that need it skip without it.
emoji-font:
	@dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq fonts-noto-color-emoji >/dev/null)

# Figure labels (generation/figures.py) draw Chinese prompts with Noto Sans CJK (a Debian package); without it
# they fall back to PIL's font, which has no Chinese glyphs, and the test of Chinese labels skips.
cjk-font:
	@dpkg -s fonts-noto-cjk >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq fonts-noto-cjk >/dev/null)

# The web demo's browser test drives Debian's chromium (Playwright never downloads one); it skips without it.
# Not pinned to a version: Debian's security updates replace chromium in bookworm, and the old one leaves the mirror.
chromium:
	@dpkg -s chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf $(VENV)
