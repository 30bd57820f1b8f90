# Stand-in for the registry image rust:<version>-<debian release> (the builder of
# deploy/Dockerfile) where Docker Hub cannot be reached: the local Debian stand-in
# plus the host's Rust toolchain, laid out as the official image has it (rustup,
# RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo). Built by
# scripts/compose-test.sh from a context it stages: rustup/ (the toolchain, without
# its docs), cargo/bin/ (rustup and its proxies; wasm-bindgen when the host has it) and
# ca/ (the host's own extra CA certificates, from /usr/local/share/ca-certificates:
# where a TLS-inspecting egress proxy stands between the machine and crates.io,
# cargo in the builder must trust what the host trusts).
ARG BASE
FROM ${BASE}
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
ARG RUST_VERSION
ENV RUST_VERSION=${RUST_VERSION}
RUN cargo --version && rustc --version
