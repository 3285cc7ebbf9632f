# reenact: `make demo` animates the bundled example; `make test` runs the test suite.
# Both create .venv and install what they need first (apt packages too, when run as root).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow check-install setup system-deps bench clean

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip" "setuptools<81" wheel
	$(PY) -m pip install -q -e ".[dev,ray,ui]"
	# optional crepe F0 for so-vits-svc; --no-deps: torchcrepe requires torchaudio, whose wheels replace torch
	$(PY) -m pip install -q --no-deps "torchcrepe==0.0.24" "resampy>=0.4"
	@touch $(STAMP)

setup: $(STAMP)

# The ffmpeg CLI is only used by tests that make odd media (rotation, 10-bit, VFR);
# reenact itself uses PyAV, which bundles FFmpeg's libraries. Chromium is the browser the
# web UI's tests drive with Playwright (Playwright's own browser download is not used).
SYSTEM_PACKAGES := ffmpeg chromium
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "note: could not install$$missing; tests that need them will be skipped"; \
	  else echo "note:$$missing not found; tests that need them will be skipped"; fi; fi

demo: $(STAMP)
	$(VENV)/bin/reenact animate examples/portrait.png examples/driver.mp4 -o demo.mp4
	$(VENV)/bin/reenact evaluate face demo.mp4 --source examples/portrait.png --driver examples/driver.mp4
	@echo "wrote demo.mp4"

# `make test` is the quick suite (under 10 minutes on 2 cores); `make test-slow` the end-to-end and
# multi-process tests; CI (.ci/run) runs both.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# What a user's `pip install .` gives (not the venv above): a fresh venv, torch, the package, then a subject
# and `reenact make` on the bundled example. About 5 minutes on 2 cores; CI runs it after `make test`, before `make test-slow`.
check-install:
	@$(MAKE) --no-print-directory system-deps
	PYTHON=$(PYTHON) .ci/check_install.sh

bench: $(STAMP)
	$(PY) benchmarks/animate.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info demo.mp4 demo.json
