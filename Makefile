# Two entry points for people: `make demo` and `make test`. Both create/refresh .venv and install the real data
# they need themselves (pinned Python packages; nilearn's bundled MNI152; Debian's mricron-data: Colin27 + AAL).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MRICRON := /usr/share/mricron/templates/aal.nii.gz

.PHONY: venv data demo test test-all clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# real scans for tests and the demo: nilearn ships the MNI152 2009a T1 + tissue maps (data only, no deps)
	$(PY) -m pip install --quiet --no-deps nilearn==0.14.1
	touch $(STAMP)

venv: $(STAMP)

# Debian's mricron-data (Colin27 T1 + AAL atlas): the demo's and the tests' labelled brain. Installed with apt-get
# (as root, or with password-less sudo); without it the demo and its tests cannot run, so this fails loudly.
data:
	@test -f $(MRICRON) || { \
	  echo "installing Debian's mricron-data (Colin27 + AAL atlas) with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mricron-data >/dev/null; }
	@test -f $(MRICRON) || { echo "error: $(MRICRON) is missing and mricron-data could not be installed (apt-get as root)"; exit 1; }

demo: $(STAMP) data
	$(PY) -m uniseg_hub.demo

test: $(STAMP) data
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) data
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
