# bids_m2i BIDS-App image: `docker run ... IMAGE BIDS_DIR OUTPUT_DIR {participant,group} [options]`
#
# Base: the official python:3.11-slim image, not nvidia/cuda. torch 2.14.1's PyPI wheel for Linux x86_64
# already carries the CUDA 13.0 user-space libraries (cuBLAS, cuDNN, NCCL, ... as nvidia-* wheels), so a
# CUDA base would only add a second, unused copy (~2 GB) and a second Python. The GPU driver (libcuda.so)
# always comes from the host: Docker's `--gpus all` (NVIDIA Container Toolkit) or Apptainer's `--nv`
# injects it. Python 3.11 is the version CI tests (.ci/run), and the install steps below are the README's.
FROM python:3.11-slim-bookworm

# Build-time facts recorded in the image (OCI labels) and, through the M2I_CONTAINER_* variables, in every
# derivatives dataset_description.json (GeneratedBy[].Container). The release workflow passes them.
ARG VERSION=dev
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG IMAGE_NAME=ghcr.io/bids-m2i/bids_m2i
# Empty: torch from PyPI (CUDA 13.0, needs an NVIDIA driver >= 580). For older drivers build with e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (see docs/containers.md).
ARG TORCH_INDEX_URL=

LABEL org.opencontainers.image.title="bids_m2i" \
      org.opencontainers.image.description="BIDS-App: reconstructs what a person saw or imagined from fMRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/bids-m2i/bids_m2i" \
      org.opencontainers.image.url="https://github.com/bids-m2i/bids_m2i" \
      org.opencontainers.image.documentation="https://github.com/bids-m2i/bids_m2i/tree/main/docs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="bids_m2i developers"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The same three steps as the README and .ci/run (venv, pinned torch, then the project), except that the
# project is installed non-editable and without the test extra. torch gets its own layer, before the
# sources are copied, so that editing the code does not download 4 GB of torch and CUDA again; only what
# the wheel needs is copied (.dockerignore), so editing tests or docs invalidates nothing.
# Behind a TLS-intercepting proxy pip must trust the proxy's CA: lend the build a CA bundle as the secret
# `ca-bundle` (`docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt .`). It is
# mounted for these two steps only and never stored in the image; without it nothing changes.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        torch==2.14.1 torchvision==0.29.1
WORKDIR /opt/bids_m2i
COPY pyproject.toml README.md ./
COPY bids_m2i ./bids_m2i
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/venv/bin/pip install . \
    && rm -rf /opt/bids_m2i/bids_m2i

# Unprivileged user. Mount points: /data (BIDS input, mount read-only), /out (derivatives), /work (work
# dir), /models (models folder, read-only). /work and /tmp are world-writable (sticky) so that
# `docker run --user "$(id -u):$(id -g)"` with any uid still has a writable fallback.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash m2i \
    && mkdir -p /data /out /work /models \
    && chown m2i:m2i /out /work \
    && chmod 1777 /work

# Offline by design: nothing is downloaded while m2i runs; models come from the /models mount.
# NIPYPE_NO_ET: nipype otherwise asks a web service for its latest version when interfaces are created.
# Caches point to /tmp so that `m2i --version/--help` work in a read-only container; during a run the app
# moves every cache (matplotlib, torch, Hugging Face, nipype, XDG: also the validator's deno cache) under
# <work_dir>/.cache itself.
# The M2I_CONTAINER_* variables are read by the derivatives writer (GeneratedBy.Container: Type, Tag as in
# BIDS' own example "poldracklab/fmriprep:1.4.1", URI); Apptainer runs override the type on the command line.
# NVIDIA_*: what the NVIDIA Container Toolkit exposes (nvidia/cuda images set the same two).
ENV PATH=/opt/venv/bin:$PATH \
    M2I_MODELS_DIR=/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    NIPYPE_NO_ET=1 \
    MPLCONFIGDIR=/tmp/m2i-cache/matplotlib \
    TORCH_HOME=/tmp/m2i-cache/torch \
    HF_HOME=/tmp/m2i-cache/huggingface \
    XDG_CACHE_HOME=/tmp/m2i-cache \
    M2I_CONTAINER_TYPE=docker \
    M2I_CONTAINER_URI=docker://${IMAGE_NAME}:${VERSION} \
    M2I_CONTAINER_TAG=${IMAGE_NAME}:${VERSION} \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Numeric, so that runtimes enforcing runAsNonRoot (Kubernetes, some HPC sites) can verify it.
USER 1000:1000
WORKDIR /work

ENTRYPOINT ["m2i"]
CMD ["--help"]
