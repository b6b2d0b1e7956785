# syntax=docker/dockerfile:1
# The tokenmesh sidecar, with tokenmesh-capture beside it: the injection
# webhook runs the capture init container from this same image
# (command: ["tokenmesh-capture", "install"]), and that needs the iptables
# commands, so the final stage is Debian's slim image with iptables (both the
# nf_tables and the legacy backend) rather than distroless.
# Build from the repository root:
#   docker build -f docker/sidecar.Dockerfile -t ghcr.io/tokenmesh/sidecar:0.1.0 .
# The sidecar runs as uid 1337 (the capture rules exclude that uid's traffic;
# the webhook sets runAsUser 1337); the capture init container runs as uid 0
# with only NET_ADMIN and NET_RAW (docs/capture.md).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tokenmesh-sidecar --bin tokenmesh-sidecar --bin tokenmesh-capture \
 && install -D -m 0755 target/release/tokenmesh-sidecar /out/tokenmesh-sidecar \
 && install -D -m 0755 target/release/tokenmesh-capture /out/tokenmesh-capture

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1337 tokenmesh \
 && useradd --system --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tokenmesh
COPY --from=builder /out/tokenmesh-sidecar /out/tokenmesh-capture /usr/local/bin/
USER 1337:1337
EXPOSE 15006 15020
ENTRYPOINT ["/usr/local/bin/tokenmesh-sidecar"]
