# firestore-once: build in the official Rust image, run from distroless as a non-root user.
#
#   docker build -t firestore-once .
#   docker run --rm -p 8080:8080 -e GOOGLE_CLOUD_PROJECT=my-project firestore-once
#
# Keep RUST_VERSION equal to `rust-version` in Cargo.toml (tests/api/deploy/dockerfile.rs checks it).
ARG RUST_VERSION=1.91

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /app

# Dependency layer: build every dependency against placeholder sources, so this layer is
# rebuilt only when Cargo.toml or Cargo.lock change, not on every source edit. The
# placeholders' own artefacts are removed so the real build below cannot reuse them.
# Every workspace member needs its manifest and a placeholder too (the core's declared
# examples included), or cargo refuses the workspace; only the service is built: the core
# (crates/core) and the shop (crates/shop) with the binary (src/).
COPY Cargo.toml Cargo.lock ./
COPY crates/core/Cargo.toml crates/core/
COPY crates/shop/Cargo.toml crates/shop/
COPY tools/bench/Cargo.toml tools/bench/
COPY tools/check-invariants/Cargo.toml tools/check-invariants/
COPY tools/limits-proxy/Cargo.toml tools/limits-proxy/
RUN mkdir -p src tests/api crates/core/src crates/core/examples crates/shop/src \
        tools/bench/src tools/check-invariants/src tools/limits-proxy/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch crates/core/src/lib.rs crates/shop/src/lib.rs tests/api/main.rs \
    && for e in minimal embed award_points refund; do \
        echo 'fn main() {}' > crates/core/examples/$e.rs; done \
    && echo 'fn main() {}' > tools/bench/src/main.rs \
    && echo 'fn main() {}' > tools/check-invariants/src/main.rs \
    && echo 'fn main() {}' > tools/limits-proxy/src/main.rs \
    && touch tools/limits-proxy/src/lib.rs \
    && cargo build --release --locked --bin firestore-once \
    && rm -rf src crates/core/src crates/shop/src \
        target/release/firestore-once* \
        target/release/.fingerprint/firestore-once-* \
        target/release/deps/firestore_once-* \
        target/release/deps/libfirestore_once-* \
        target/release/deps/firestore_once_* \
        target/release/deps/libfirestore_once_*

# The service itself. TLS is rustls with bundled web PKI roots, so the runtime image needs
# neither OpenSSL nor a CA bundle; the binary only needs glibc, which distroless/cc has.
COPY src ./src
COPY crates/core/src ./crates/core/src
COPY crates/shop/src ./crates/shop/src
RUN cargo build --release --locked --bin firestore-once \
    && cp target/release/firestore-once /usr/local/bin/firestore-once

# glibc 2.36 on both sides: bookworm builds, distroless Debian 12 runs.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/firestore-once /usr/local/bin/firestore-once
ENV PORT=8080
EXPOSE 8080
# distroless's `nonroot` user, numeric so that a platform can verify it is not root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/firestore-once"]
