# One PyStacker image for every service: the command picks it (`meta`, `registry`, `send`, `gateway`,
# `flusher`, `msgflusher`, `db upgrade`). Settings come from PYSTACKER_* variables and secrets from
# files named by PYSTACKER_*_FILE variables (docs/deployment.md). The product only: the bench and the fault
# harness (tools/, a distribution of their own) are neither copied nor in the build context.
#
# The base is an argument so that a machine without a registry can build from a local image, e.g. a
# Debian root filesystem made with debootstrap (docs/deployment.md, "What is tested"). Any
# Debian-based image with python3 (3.11+), its venv module and useradd works. With podman, build
# with `--format docker`: the OCI format has no HEALTHCHECK.
ARG BASE_IMAGE=python:3.12-slim-bookworm

# -- build: a virtual environment with PyStacker and its dependencies, from wheels --------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/pystacker
# The dependency list first: a source change then rebuilds only the last layer.
COPY pyproject.toml README.md /src/
COPY src /src/src
# The JavaScript SDK the web app serves (src/pystacker/webapp/static/sdk is a link to ../sdk/js).
COPY sdk/js /src/sdk/js
RUN /opt/pystacker/bin/pip install --only-binary=:all: /src \
 && /opt/pystacker/bin/pip uninstall --yes pip \
 && find /opt/pystacker -name '__pycache__' -prune -exec rm -rf {} +

# -- runtime: the environment alone, run by an unprivileged user ---------------------------------------
FROM ${BASE_IMAGE}
# No compiler and no pip here: every native module arrived as a wheel in the build stage.
RUN groupadd --system --gid 10001 pystacker \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pystacker --create-home --shell /usr/sbin/nologin pystacker
COPY --from=build /opt/pystacker /opt/pystacker
COPY deploy/image/pystacker.yaml /etc/pystacker/pystacker.yaml
COPY deploy/image/healthcheck.py /usr/local/lib/pystacker/healthcheck.py
ENV PATH=/opt/pystacker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYSTACKER_DATA_DIR=/var/lib/pystacker
USER 10001:10001
WORKDIR /var/lib/pystacker
# /health of the service's own port: PYSTACKER_PORT (HTTP services) or PYSTACKER_METRICS_PORT (flushers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "/usr/local/lib/pystacker/healthcheck.py"]
ENTRYPOINT ["pystacker"]
CMD ["--help"]
