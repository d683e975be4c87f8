# sluice-load (the example app and load generator). Build from the repository root:
#   docker build -f deploy/docker/load.Dockerfile -t sluice-load .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-loadtest && strip target/release/sluice-load

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice-load /usr/local/bin/sluice-load
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice-load"]
