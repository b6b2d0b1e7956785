# syntax=docker/dockerfile:1
# The tokenmesh operator (health and metrics :8080, injection webhook :9443).
# Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/tokenmesh/operator:0.1.0 .
# Runs as the distroless "nonroot" user (65532) with a read-only root
# filesystem.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tokenmesh-operator --bin tokenmesh-operator \
 && install -D -m 0755 target/release/tokenmesh-operator /out/tokenmesh-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/tokenmesh-operator /usr/local/bin/tokenmesh-operator
USER 65532:65532
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/tokenmesh-operator"]
