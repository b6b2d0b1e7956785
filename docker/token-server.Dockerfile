# syntax=docker/dockerfile:1
# The tokenmesh token server (OAuth HTTP endpoints :8080, gRPC API :8081).
# Build from the repository root (the build context is the Rust workspace;
# .dockerignore keeps everything else out):
#   docker build -f docker/token-server.Dockerfile -t ghcr.io/tokenmesh/token-server:0.1.0 .
# Runs as the distroless "nonroot" user (65532); needs no writable path but
# its --data-dir (the chart mounts a volume there) and /tmp.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p token-server --bin token-server \
 && install -D -m 0755 target/release/token-server /out/token-server

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/token-server /usr/local/bin/token-server
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/token-server"]
