# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, ship a small non-root runtime.
# (No Docker engine runs on the project's machines: CI lints this file with
# hadolint instead of building it.)

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The dependency layer is cached until Cargo.toml/Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin waitroom

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 waitroom \
    && useradd --system --uid 10001 --gid waitroom --home-dir /nonexistent --shell /usr/sbin/nologin waitroom
COPY --from=build /src/target/release/waitroom /usr/local/bin/waitroom
COPY config/waitroom.toml /etc/waitroom/waitroom.toml
# The embedded store's default path (./waitroom-state) lands here; mount a
# volume to keep it. With the redis store nothing is written to disk (the
# Kubernetes manifests run with a read-only root filesystem).
RUN install -d -o 10001 -g 10001 /var/lib/waitroom
WORKDIR /var/lib/waitroom
USER 10001:10001
EXPOSE 8080 8081
# Liveness/readiness live on the admin port: /healthz and /readyz.
ENTRYPOINT ["/usr/local/bin/waitroom"]
CMD ["run", "--config", "/etc/waitroom/waitroom.toml"]
