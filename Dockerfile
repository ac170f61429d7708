# syntax=docker/dockerfile:1
# One image for every tokenforge service: `tokenforge serve <routing|wallet|payments|usage|gateway>`,
# `tokenforge migrate [service ...]`. Build: docker build -t tokenforge:0.1.0 .
# Pin the base by digest in your registry (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: generate the protobuf modules, install the package and its pinned deps in a venv
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# grpcio-tools (a dev extra) lives in the build stage only: it makes tokenforge/generated/*/v1/*_pb2*.py.
RUN pip install -c constraints.txt grpcio-tools==1.85.1 \
    && python -m venv /opt/tokenforge
COPY protos ./protos
COPY tokenforge ./tokenforge
COPY services ./services
COPY apps ./apps
RUN python -m tokenforge.tools.genprotos \
    && PIP_CONSTRAINT=/src/constraints.txt /opt/tokenforge/bin/pip install --no-compile . \
    && /opt/tokenforge/bin/python -c "import tokenforge.generated.wallet.v1.wallet_pb2_grpc, services.gateway.app" \
    && /opt/tokenforge/bin/python -m pip uninstall --yes pip setuptools

# ---- runtime: the venv only, no compiler, no pip caches, a non-root user
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tokenforge" \
      org.opencontainers.image.description="Low-cost LLM tokens through one OpenAI-compatible API"
# DL3064 matches the "TOKEN" in the TOKENFORGE_ prefix; these are ports and a bind address.
# Secrets come from the orchestrator at run time, never from the image.
# hadolint ignore=DL3064
ENV PATH=/opt/tokenforge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENFORGE_BIND_HOST=0.0.0.0 \
    TOKENFORGE_GRPC_PORT=50051 \
    TOKENFORGE_HTTP_PORT=8080 \
    TOKENFORGE_METRICS_PORT=9464
RUN groupadd --system --gid 10001 tokenforge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tokenforge
COPY --from=build /opt/tokenforge /opt/tokenforge
WORKDIR /tmp
USER 10001:10001
# 50051 gRPC (every service), 8080 HTTP (gateway), 9464 Prometheus metrics
EXPOSE 50051 8080 9464
ENTRYPOINT ["tokenforge"]
CMD ["--help"]
