# sluice (operator, CLI) and kubectl-sluice. Build from the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t sluice .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice-operator \
 && strip target/release/sluice target/release/kubectl-sluice

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY --from=build /src/target/release/kubectl-sluice /usr/local/bin/kubectl-sluice
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/sluice"]
