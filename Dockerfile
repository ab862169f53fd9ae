# The spotguard agent's image: `spotguard run` as a DaemonSet on AKS spot nodes (resources:
# docs/footprint.md, "Container resources"). Needs BuildKit (RUN --mount). Build from the
# repository root; the release procedure fills the three build arguments:
#
#   docker build \
#     --build-arg BASE=python:3.11-slim-bookworm@sha256:<digest of that tag, looked up at release> \
#     --build-arg VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' daemon/spotguard/__init__.py)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t <registry>/spotguard:<VERSION> .
#
# BASE is the whole image reference because FROM cannot append an optional "@sha256:..." to a
# tag; the default (tag only) is for local builds. VERSION's default is kept equal to
# daemon/spotguard/__init__.py's __version__ by tests/deploy/test_image_recipe.py, and
# deploy/image/install.sh fails the build if the wheel installed reports another version.
ARG BASE=python:3.11-slim-bookworm

# --- stage 1: wheels for spotguard and its runtime dependencies (no extras) -----------------
# Binary wheels only: nothing is compiled, so no compiler is needed here either.
FROM ${BASE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --only-binary=:all: \
        --wheel-dir /wheels .

# --- stage 2: the agent -------------------------------------------------------------------
FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="spotguard" \
      org.opencontainers.image.description="Drains and checkpoints AKS spot nodes inside the Azure preemption notice" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/spotguard/spotguard" \
      org.opencontainers.image.licenses="Apache-2.0"

# The wheels and the install script are mounted for this one step, not copied into a layer.
# The same script is what tests/deploy/test_image_recipe.py runs.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=bind,source=deploy/image/install.sh,target=/tmp/install.sh \
    SPOTGUARD_VERSION="${VERSION}" sh /tmp/install.sh /wheels /opt/spotguard

# Read-only root filesystem: the agent writes nothing to disk (state lives on the Node object,
# metrics are in memory, logs go to stdout/stderr), and the bytecode was compiled at install.
# HOME: 65532 has no /etc/passwd entry, and kubernetes-asyncio resolves ~ when imported (its
# default kubeconfig path); without HOME that import fails. Nothing is read or written there.
ENV PATH=/opt/spotguard/bin:$PATH \
    HOME=/nonexistent \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# /metrics, /healthz, /readyz (SPOTGUARD_HTTP_ADDRESS, default 0.0.0.0:9464)
EXPOSE 9464
# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry (65532: "nonroot").
USER 65532:65532
ENTRYPOINT ["spotguard"]
CMD ["run"]
