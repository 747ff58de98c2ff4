#!/usr/bin/env bash
# Build container images without a registry or a container engine: each image is one
# FROM-scratch layer (the binaries, the shared libraries they link, a passwd file),
# written as an OCI image layout archive that `ctr images import` (scripts/node.sh
# import) loads into containerd.
#
#   scripts/build-images.sh node     pause and CoreDNS (scripts/build-node.sh's binaries)
#   scripts/build-images.sh aegis    the Aegis image docker.io/library/aegis:<version>
#   scripts/build-images.sh spire    SPIRE's server and agent (scripts/build-spire.sh)
#   scripts/build-images.sh busybox  Debian's static busybox (the examples' app container)
#   scripts/build-images.sh all      all of them
# The last line on stdout is the directory of the archives
# (${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/images/<name>.tar).
#
# The Aegis image follows the Dockerfile, read by this script: the same `cargo build`
# command (its RUN line, here with CARGO_TARGET_DIR, default
# ${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}/target), the files its COPY lines place, its
# USER, EXPOSE, ENTRYPOINT and CMD. The base differs only in origin: the Dockerfile's is
# distroless cc-debian12 (Debian 12's glibc and libgcc, CA certificates, a nonroot user
# 65532); here the same Debian 12 libraries come from this machine (ldd of the binaries).
# AEGIS_IMAGE_PROFILE=debug builds the image from the debug binaries instead (faster
# when `cargo test` has built them; not the Dockerfile's content).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${AEGIS_CACHE_DIR:-$HOME/.cache/aegis}"
out="$cache/images"

die() { echo "build-images: error: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

# blob FILE DIR: moves FILE into DIR's OCI blob store; prints its digest.
blob() {
    local d
    d="$(sha "$1")"
    mv "$1" "$2/blobs/sha256/$d"
    echo "$d"
}

# oci_archive NAME REF ROOTFS CONFIG: writes $out/NAME.tar, an OCI image layout with one
# uncompressed layer (ROOTFS, owned by root, timestamps at 0: the same input gives the
# same bytes) and the image config CONFIG (the JSON of the config's "config" member).
oci_archive() {
    local name="$1" ref="$2" rootfs="$3" config="$4" lay diff cfg cfg_size man man_size layer_size
    lay="$(mktemp -d)"
    mkdir -p "$lay/blobs/sha256"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$lay/layer.tar" .
    layer_size="$(stat -c %s "$lay/layer.tar")"
    diff="$(blob "$lay/layer.tar" "$lay")"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$config" "$diff" >"$lay/config.json"
    cfg_size="$(stat -c %s "$lay/config.json")"
    cfg="$(blob "$lay/config.json" "$lay")"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$cfg" "$cfg_size" "$diff" "$layer_size" >"$lay/manifest.json"
    man_size="$(stat -c %s "$lay/manifest.json")"
    man="$(blob "$lay/manifest.json" "$lay")"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
        "$man" "$man_size" "$ref" "${ref##*:}" >"$lay/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$lay/oci-layout"
    mkdir -p "$out"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$lay" -cf "$out/$name.tar.tmp" oci-layout index.json blobs
    mv "$out/$name.tar.tmp" "$out/$name.tar"
    rm -rf "$lay"
    log "$out/$name.tar: $ref (manifest sha256:$man, $((layer_size / 1048576)) MiB)"
}

# add_libs ROOTFS BIN...: the shared libraries (and the loader) BINs link, at their paths.
add_libs() {
    local root="$1" lib
    shift
    for lib in $(ldd "$@" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# base ROOTFS: /etc/passwd and /etc/group with root and nonroot (65532, as distroless),
# CA certificates, and a /tmp.
base() {
    mkdir -p "$1/etc/ssl/certs" "$1/tmp" "$1/home/nonroot"
    chmod 1777 "$1/tmp"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
    return 0
}

json_list() { # WORD...: ["WORD",...]
    local s="" w
    for w in "$@"; do s+="${s:+,}\"$w\""; done
    echo "[$s]"
}

image_node() {
    local nb root
    nb="$("$here/build-node.sh" | tail -n1)" || die "scripts/build-node.sh failed"
    root="$(mktemp -d)"
    cp "$nb/pause" "$root/pause"
    oci_archive pause aegis.local/pause:latest "$root" '{"Entrypoint":["/pause"],"User":"65535:65535"}'
    rm -rf "$root"
    root="$(mktemp -d)"
    base "$root"
    cp "$nb/coredns" "$root/coredns"
    oci_archive coredns aegis.local/coredns:latest "$root" '{"Entrypoint":["/coredns"],"User":"65532:65532"}'
    rm -rf "$root"
}

# The Dockerfile's instruction KEY (e.g. ENTRYPOINT): its argument, the last one given.
dockerfile() { sed -n "s/^$1[[:space:]]\{1,\}//p" "$repo/Dockerfile" | tail -n1; }

image_aegis() {
    local cargo_cmd target root version src dst ports p user
    command -v cargo >/dev/null || die "cargo is needed to build the Aegis binaries"
    cargo_cmd="$(grep -o 'cargo build [^&\\]*' "$repo/Dockerfile" | head -n1)"
    [[ "$cargo_cmd" == "cargo build --release "* ]] || die "no 'cargo build --release …' RUN line found in the Dockerfile"
    target="${CARGO_TARGET_DIR:-$cache/target}"
    # AEGIS_IMAGE_PROFILE=debug: the same command without --release (the binaries
    # `cargo test` already built), to save a cold release build where speed matters more.
    local profile=release
    case "${AEGIS_IMAGE_PROFILE:-release}" in
        release) ;;
        debug) profile=debug cargo_cmd="${cargo_cmd/--release /}" ;;
        *) die "AEGIS_IMAGE_PROFILE must be release or debug, not '${AEGIS_IMAGE_PROFILE}'" ;;
    esac
    log "running the Dockerfile's build: $cargo_cmd (CARGO_TARGET_DIR=$target)"
    # shellcheck disable=SC2086 # the Dockerfile's words
    (cd "$repo" && CARGO_TARGET_DIR="$target" $cargo_cmd) || die "$cargo_cmd failed"
    version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/aegis/Chart.yaml")"
    [[ -n "$version" ]] || die "no appVersion in charts/aegis/Chart.yaml"
    root="$(mktemp -d)"
    base "$root"
    # COPY --from=build /out/X DEST: X is target/release/X (the RUN line copies it to /out).
    while read -r src dst; do
        mkdir -p "$root$(dirname "$dst")"
        cp "$target/$profile/$(basename "$src")" "$root$dst"
        add_libs "$root" "$root$dst"
    done < <(sed -n 's/^COPY --from=build \([^ ]*\) \([^ ]*\)$/\1 \2/p' "$repo/Dockerfile")
    [[ -n "$(find "$root/usr" -type f 2>/dev/null)" ]] || die "no 'COPY --from=build' lines found in the Dockerfile"
    user="$(dockerfile USER)"
    ports=""
    for p in $(dockerfile EXPOSE); do ports+="${ports:+,}\"$p/tcp\":{}"; done
    oci_archive aegis "docker.io/library/aegis:$version" "$root" \
        "{\"User\":\"$user\",\"ExposedPorts\":{$ports},\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],\"Entrypoint\":$(dockerfile ENTRYPOINT),\"Cmd\":$(dockerfile CMD),\"WorkingDir\":\"/home/nonroot\"}"
    rm -rf "$root"
}

image_spire() {
    local sb root version
    sb="$("$here/build-spire.sh" | tail -n1)" || die "scripts/build-spire.sh failed"
    version="$(basename "$(dirname "$sb")")"
    root="$(mktemp -d)"
    base "$root"
    mkdir -p "$root/usr/local/bin"
    cp "$sb/spire-server" "$sb/spire-agent" "$root/usr/local/bin/"
    add_libs "$root" "$root/usr/local/bin/spire-server" "$root/usr/local/bin/spire-agent"
    oci_archive spire "aegis.local/spire:$version" "$root" '{"Env":["PATH=/usr/local/bin"]}'
    rm -rf "$root"
}

image_busybox() {
    local root a bb
    bb=/bin/busybox
    if ! [[ -x "$bb" ]] || ldd "$bb" >/dev/null 2>&1; then
        [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null || die "a static busybox is needed; install Debian's busybox-static"
        log "installing Debian's busybox-static"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null; } || die "apt-get install busybox-static failed"
    fi
    root="$(mktemp -d)"
    base "$root"
    mkdir -p "$root/bin"
    cp "$bb" "$root/bin/busybox"
    for a in $("$bb" --list); do [[ "$a" == busybox ]] || ln -s busybox "$root/bin/$a"; done
    oci_archive busybox "aegis.local/busybox:$("$bb" | head -n1 | awk '{print $2}')" "$root" '{"Env":["PATH=/bin"],"Cmd":["sh"]}'
    rm -rf "$root"
}

case "${1:-}" in
    node) image_node ;;
    aegis) image_aegis ;;
    spire) image_spire ;;
    busybox) image_busybox ;;
    all) image_node; image_aegis; image_spire; image_busybox ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
echo "$out"
