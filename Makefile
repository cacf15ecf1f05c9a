# Two commands for a fresh machine (see README): `make demo` and `make test`.
# torch is installed first and pinned: on these machines torch==2.13.0 is a local CPU wheel, and
# letting pip resolve torch through a dependency would pull gigabytes of CUDA packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PIP := $(PY) -m pip install --quiet

.PHONY: demo test install install-dev clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PIP) torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.runtime-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.runtime-installed
	$(PIP) -e ".[dev]"
	touch $@

install: $(VENV)/.runtime-installed

install-dev: $(VENV)/.dev-installed

# The main job end to end on the synthetic phantoms in sample_data/.
demo: install
	$(VENV)/bin/medsaga inspect sample_data

test: install-dev
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
