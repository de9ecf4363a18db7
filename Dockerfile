# The nodeagent image: a virtualenv with hash-pinned dependencies and the package as a wheel.
#
#   docker build -t ghcr.io/nodeagent/nodeagent:0.1.0 .            (or: buildah bud ...)
#   docker build --build-arg BASE_IMAGE=my-mirror/python:3.11-slim-bookworm ...
#
# requirements.lock pins every runtime dependency with hashes (`make lock` regenerates it).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
RUN python3 -m venv /opt/nodeagent
COPY requirements.lock ./
RUN /opt/nodeagent/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY nodeagent ./nodeagent
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/nodeagent/bin/pip install --no-cache-dir --no-deps /wheels/nodeagent-*.whl \
 && /opt/nodeagent/bin/pip uninstall --yes pip \
 && install -D -m 0755 nodeagent/ecr/plugin.py /opt/nodeagent/libexec/nodeagent-ecr-credential-provider

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
