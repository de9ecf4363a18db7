# The nodeagent image: a virtualenv with hash-pinned dependencies and the package as a wheel.
#
# The build needs no network: `make image` (scripts/build-image.sh) first fills ./wheelhouse with
# the wheels pinned (with hashes) in requirements.lock plus the nodeagent wheel built from this
# tree, then builds this file with buildah (or docker):
#
#   make image IMAGE=registry.example.com/platform/nodeagent:0.1.0
#   BASE_IMAGE=python:3.11-slim-bookworm (default) | any image with python3.11 and its venv module
#
# requirements.lock pins every runtime dependency with hashes (`make lock` regenerates it).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY requirements.lock ./
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/nodeagent \
 && /opt/nodeagent/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --require-hashes --no-deps -r requirements.lock \
 && /opt/nodeagent/bin/pip install --no-cache-dir --no-index --no-deps /wheelhouse/nodeagent-*.whl \
 && /opt/nodeagent/bin/pip uninstall --yes pip
COPY nodeagent/ecr/plugin.py ./plugin.py
RUN install -D -m 0755 plugin.py /opt/nodeagent/libexec/nodeagent-ecr-credential-provider

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="nodeagent" \
      org.opencontainers.image.description="Node-level registry credential agent for Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/nodeagent/nodeagent"
COPY --from=build /opt/nodeagent /opt/nodeagent
# The ECR plugin is also at a fixed path, /opt/nodeagent/libexec/nodeagent-ecr-credential-provider
# (the agent installs its packaged copy on the node; this one is for inspection and tooling).
# The Helm chart mounts the host directories the agent writes under /host; the root filesystem
# is read-only there, so no bytecode is written at run time.
ENV PATH=/opt/nodeagent/bin:$PATH \
    NODEAGENT_HOST_ROOT=/host \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Root: the files it writes are root-owned host files (the chart drops every capability).
USER 0:0
ENTRYPOINT ["/opt/nodeagent/bin/nodeagent"]
CMD ["run"]
