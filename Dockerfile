# The agent image. The base is a build argument so an offline build can use a local base.
# Not yet built in CI (that is the container-image issue); `make test` does not need it.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodeagent ./nodeagent
RUN python3 -m venv /opt/nodeagent && /opt/nodeagent/bin/pip install --no-cache-dir .

FROM ${BASE_IMAGE}
COPY --from=build /opt/nodeagent /opt/nodeagent
# The Helm chart mounts the host's directories under /host.
ENV PATH=/opt/nodeagent/bin:$PATH \
    NODEAGENT_HOST_ROOT=/host \
    PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["nodeagent"]
CMD ["version"]
