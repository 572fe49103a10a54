# The Tollgate sidecar with its filter module: `tollgate serve` serves the admin API and the
# module (/tollgate/tollgate.wasm) that Istio gateways fetch; see README, "Istio".
#   docker build -t tollgate:0.1.0 .
FROM rust:1-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --release --lib --target wasm32-wasip1 \
 && cargo build --release --bin tollgate

# distroless/cc: glibc and CA certificates, no shell; runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY --from=build /src/target/wasm32-wasip1/release/tollgate.wasm /usr/local/lib/tollgate/tollgate.wasm
# `tollgate render` inside the image pins this very module's sha256.
ENV TOLLGATE_WASM=/usr/local/lib/tollgate/tollgate.wasm
USER 65532:65532
EXPOSE 4001
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--config", "/etc/tollgate/config.yaml", "--host", "0.0.0.0", "--port", "4001", "--data-dir", "/var/lib/tollgate"]
