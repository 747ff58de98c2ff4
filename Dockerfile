# The Aegis image: `aegis` (the Safe, the Sentinel and workload commands) and
# VSecM's `safe` command, on a minimal base with no shell and no package
# manager, running as a fixed non-root user (uid/gid 65532, as the Helm chart
# expects).
#
#   docker build -t aegis:0.1.0 .
#
# Pin both base images by digest in your build (FROM image@sha256:…); the tags
# below are the ones the recipe was written for. See docs/INSTALL.md for what
# was and was not run in the repository's CI (there is no container engine there).

# --- build: the release binaries, from the locked dependency graph ---
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not refetch them.
COPY Cargo.toml Cargo.lock rustfmt.toml clippy.toml ./
COPY crates ./crates
RUN cargo build --release --locked -p aegis --bin aegis --bin safe \
 && mkdir -p /out \
 && cp target/release/aegis target/release/safe /out/

# --- run: glibc and libgcc only (distroless "cc"), no shell ---
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/aegis /usr/local/bin/aegis
COPY --from=build /out/safe /usr/local/bin/safe
USER 65532:65532
EXPOSE 8443 8081
ENTRYPOINT ["/usr/local/bin/aegis"]
CMD ["--help"]
