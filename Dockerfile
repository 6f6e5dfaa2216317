# syntax=docker/dockerfile:1
# onceflow's container images (docker-compose.yml builds both; Kubernetes runs `onceflow`):
#   docker build --target onceflow -t onceflow .           # the one onceflow binary, every role
#   docker build --target sandbox  -t onceflow-sandbox .   # the provider sandboxes (demo only)
# Settings come from a mounted file (--config, or ONCEFLOW_CONFIG); secrets from the environment
# or mounted files, never from the image.

FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys (C/C++, CMake-free); native TLS needs OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p onceflow --bin onceflow \
 && cargo build --release --locked -p onceflow-sandbox --bin onceflow-sandbox

FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin onceflow

FROM base AS sandbox
COPY --from=build /src/target/release/onceflow-sandbox /usr/local/bin/onceflow-sandbox
USER 10001:10001
EXPOSE 8700
ENTRYPOINT ["onceflow-sandbox"]
CMD ["--listen", "0.0.0.0:8700"]

FROM base AS onceflow
COPY --from=build /src/target/release/onceflow /usr/local/bin/onceflow
USER 10001:10001
ENV ONCEFLOW_CONFIG=/etc/onceflow/onceflow.toml
# ingest 8080, console 8090, metrics/health 9464 (ingest), 9465 (process), 9466 (deliver)
EXPOSE 8080 8090 9464 9465 9466
ENTRYPOINT ["onceflow"]
CMD ["--help"]
