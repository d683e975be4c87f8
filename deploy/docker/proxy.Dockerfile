# sluice-proxy image. Build from the repository root:
#   docker build -f deploy/docker/proxy.Dockerfile -t sluice-proxy .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile release-proxy --locked -p sluice-proxy && strip target/release-proxy/sluice-proxy

# Distroless: no shell, no package manager; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release-proxy/sluice-proxy /usr/local/bin/sluice-proxy
USER 65532:65532
# No transparent huge pages for the allocator's arenas, from its first
# allocation on (see the allocator in proxy/src/main.rs).
ENV MIMALLOC_ALLOW_THP=0
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/sluice-proxy"]
