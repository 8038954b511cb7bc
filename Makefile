# Two entry points for people: `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# real scans for tests and the demo: nilearn ships the MNI152 2009a T1 + tissue maps (data only, no deps)
	$(PY) -m pip install --quiet --no-deps nilearn==0.14.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m uniseg_hub.demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
