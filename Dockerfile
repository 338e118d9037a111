# syntax=docker/dockerfile:1
# The kvtenant image: one binary (controller, syncer, CLI) on distroless, running as nonroot.
# Built without the `dev` feature: `kvtenant dev` and the testenv/simulator code stay out.
#   docker build -t kvtenant:dev .
# BuildKit (the default builder of current Docker) is needed for the cache mounts.

FROM rust:1.95.0-bookworm AS build
# rust-toolchain.toml pins 1.95.0 (+ rustfmt, clippy for CI); this image is 1.95.0, so
# select it directly instead of letting rustup download the components.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin kvtenant \
    && install -D -m 0755 target/release/kvtenant /out/kvtenant

# glibc + libgcc, no shell, no package manager; user 65532 "nonroot"
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kvtenant /kvtenant
USER nonroot
ENTRYPOINT ["/kvtenant"]
