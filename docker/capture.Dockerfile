# syntax=docker/dockerfile:1
# tokenmesh-capture alone, with the iptables commands it drives. The
# injection webhook runs tokenmesh-capture from the sidecar image
# (docker/sidecar.Dockerfile, which holds both); this image is for running it
# on its own, e.g. `tokenmesh-capture check` or `remove` in a pod's network
# namespace.
# Build from the repository root:
#   docker build -f docker/capture.Dockerfile -t ghcr.io/tokenmesh/capture:0.1.0 .
# The image's user is unprivileged (65532); changing a pod's netfilter tables
# needs uid 0 with NET_ADMIN and NET_RAW, which the pod spec grants
# (runAsUser: 0, capabilities add NET_ADMIN, NET_RAW, drop ALL).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tokenmesh-sidecar --bin tokenmesh-capture \
 && install -D -m 0755 target/release/tokenmesh-capture /out/tokenmesh-capture

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/tokenmesh-capture /usr/local/bin/tokenmesh-capture
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tokenmesh-capture"]
