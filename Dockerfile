# syntax=docker/dockerfile:1
# numbers-gateway: a slim, non-root image serving on 0.0.0.0:8000.
#
#   docker build -t numbers-gateway .
#   docker run -p 8000:8000 numbers-gateway                 # development: embedded simulator
#   docker run -p 8000:8000 -e GATEWAY_ENV=production \
#     -e GATEWAY_UPSTREAM_URL=https://webexapis.com/v1 numbers-gateway
#
# The base image is pinned to an exact tag. Pinning by digest as well
# (python:3.12.12-slim-bookworm@sha256:<digest>) is better still, since a tag can be re-pushed;
# no digest is written here because this file was written on a machine that cannot pull
# images, and a digest nobody here has checked is worse than none. Record it with
# `docker buildx imagetools inspect python:3.12.12-slim-bookworm` (the multi-platform index
# digest) and append it, or pass --build-arg PYTHON_IMAGE=<tag>@sha256:<digest>. Both stages
# use the same image, so the venv's interpreter symlink (/opt/venv/bin/python ->
# /usr/local/bin/python3.12) holds.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---- build: a venv holding the locked runtime dependencies, then the package ----------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The venv gets no pip of its own: the base image's pip installs into it (--python), so the
# runtime image carries no installer in its venv.
RUN python -m venv --without-pip /opt/venv

# Dependencies first, from the hashed lock alone (runtime dependencies only, no test extras):
# this layer is rebuilt only when the lock changes, not when the code or README does.
# setuptools (the build backend), pinned and hashed too, goes into the build stage's own
# Python only: the package is built without build isolation, so nothing unpinned is fetched.
COPY deploy/requirements.lock deploy/requirements-build.lock /tmp/locks/
RUN pip --python /opt/venv/bin/python install --require-hashes --no-deps \
        -r /tmp/locks/requirements.lock \
 && pip install --require-hashes --no-deps -r /tmp/locks/requirements-build.lock

# Then the code. --no-deps: every dependency is already in the venv, from the lock.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist . \
 && pip --python /opt/venv/bin/python install --no-deps /tmp/dist/*.whl \
 && /opt/venv/bin/numbers-gateway export-schema > /dev/null

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# GATEWAY_ENV=production is deliberately NOT set here: production requires
# GATEWAY_UPSTREAM_URL, and the image without it serves the embedded simulator (demo data and
# demo tokens) in development mode, so `docker run` works with no account or network.
# Deployments set GATEWAY_ENV=production and GATEWAY_UPSTREAM_URL (see deploy/kubernetes/).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# glibc raises its mmap threshold after large frees, after which cached pages of ~1 MB land on
# the heap and fragment it: fixed, RSS stays within GATEWAY_CACHE_MAX_BYTES (measured by
# benchmarks/cache_memory.py).
ENV MALLOC_MMAP_THRESHOLD_=131072

RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway

# Owned by root and not writable by the gateway user; byte-code was compiled at install time,
# so a read-only root filesystem costs nothing at start-up.
COPY --from=build /opt/venv /opt/venv

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000

# No curl in slim images: Python's urllib does the probe. /healthz answers while the process
# is alive; orchestrators that route traffic should use /readyz for readiness.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["numbers-gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
