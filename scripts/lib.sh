# shellcheck shell=bash
# What the scripts share, written once. Sourced, not run: source "$(dirname "$0")/lib.sh".
# Sets ROOT (the workspace root, absolute) and defines functions; sets no options, changes no dir.
[[ ${BASH_SOURCE[0]} != "$0" ]] || { echo "scripts/lib.sh is sourced, not run" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The features every test build and lint uses (scripts/test, .ci/run): wgpu beside the CPU
# backends, so one build serves all tests.
# shellcheck disable=SC2034
WGPU_FEATURES="--features train/wgpu"

# Prints the CIFAR-10 archive's path, looked up as crates/model/src/testdata.rs does: one answer.
cifar_archive() {
    if [[ -n ${CIFAR10_ARCHIVE:-} ]]; then
        [[ -f $CIFAR10_ARCHIVE ]] ||
            { echo "error: $CIFAR10_ARCHIVE not found (from CIFAR10_ARCHIVE)" >&2; return 1; }
        echo "$CIFAR10_ARCHIVE"
        return 0
    fi
    local candidate tried=() list
    for candidate in "$ROOT"/{../shared,shared}/data/cifar10-jpg.tar.gz; do
        [[ -f $candidate ]] && { echo "$candidate"; return 0; }
        tried+=("$candidate")
    done
    printf -v list '%s, ' "${tried[@]}"
    echo "error: cifar10-jpg.tar.gz not found (tried ${list%, }); set CIFAR10_ARCHIVE" >&2
    return 1
}

# Unpacks the archive into DEST, or only the members matching the wildcards: most need a few images.
unpack_cifar() { # dest [wildcard...]
    local dest=$1 archive
    shift
    archive=$(cifar_archive) || return 1
    mkdir -p "$dest" && tar -xzf "$archive" -C "$dest" ${1:+--wildcards} "$@"
}

# Exports CIFAR10_ARCHIVE for cargo test, so a missing archive stops the run before a long build.
export_cifar_archive() {
    CIFAR10_ARCHIVE=$(cifar_archive) || return 1
    export CIFAR10_ARCHIVE
}

# Runs a command until it succeeds, at most TRIES times DELAY s apart: servers take time to start.
retry() { # tries delay command...
    local tries=$1 delay=$2 i
    shift 2
    for ((i = 0; i < tries; i++)); do
        "$@" && return 0
        sleep "$delay"
    done
    return 1
}

# Waits for a server's /health or /ready to answer 2xx, so no load starts before it is up.
wait_ready() { # url [tries, default 100] [delay, default 0.2]
    retry "${2:-100}" "${3:-0.2}" curl -sf -m 1 -o /dev/null "$1" ||
        { echo "server did not come up" >&2; return 1; }
}

# Installs Debian packages (apt-get options first), via sudo unless root: for fresh machines.
apt_install() { # [option...] package...
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Installs wrk, the load generator of bench-http and overload, when it is not on PATH.
need_wrk() {
    command -v wrk >/dev/null || apt_install wrk
}

# Installs the Debian packages named, those whose command (the same name) is not on PATH.
need_commands() { # command...
    local missing=() command
    for command in "$@"; do
        command -v "$command" >/dev/null || missing+=("$command")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "== installing ${missing[*]}"
    apt_install "${missing[@]}"
}

# Podman as the container scripts run it: installed when missing, and CONTAINERS_CONF
# exported, pointing at target/container/containers.conf (written here), which picks runc.
podman_env() {
    local work=$ROOT/target/container
    need_commands podman runc iptables debootstrap || return 1
    mkdir -p "$work"
    # crun fails on these hosts' hybrid cgroups; raising ulimits is not permitted here.
    cat > "$work/containers.conf" <<'CONF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
CONF
    export CONTAINERS_CONF=$work/containers.conf
}

# A minimal Debian root in DIR, without the package caches and docs an image does not need.
bootstrap_rootfs() { # dir [extra packages, comma-separated]
    local dir=$1 include=${2:-}
    rm -rf "$dir"
    debootstrap --variant=minbase ${include:+--include=$include} bookworm "$dir" >"$dir.log" 2>&1 ||
        { echo "debootstrap failed (log: $dir.log)" >&2; return 1; }
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/info "$dir"/usr/share/locale
}

# The two base images docker/Dockerfile names, made with debootstrap when podman lacks them
# (no Docker, no registry needed): the runtime's plain Debian, and a builder with gcc and this
# machine's Rust toolchain. Call podman_env first.
base_images() {
    local work=$ROOT/target/container sysroot
    local runtime=docker.io/library/debian:bookworm-slim
    local builder=docker.io/library/rust:1.95-slim-bookworm
    if ! podman image exists $runtime; then
        echo "== making $runtime with debootstrap"
        bootstrap_rootfs "$work/runtime-rootfs" || return 1
        tar -C "$work/runtime-rootfs" -c . | podman import -q - $runtime || return 1
    fi
    if ! podman image exists $builder; then
        echo "== making $builder with debootstrap + this machine's Rust toolchain"
        bootstrap_rootfs "$work/builder-rootfs" gcc,libc6-dev || return 1
        sysroot=$(rustc --print sysroot) || return 1
        mkdir -p "$work/builder-rootfs/usr/local/rust" "$work/builder-rootfs/usr/local/cargo"
        cp -a "$sysroot/bin" "$sysroot/lib" "$work/builder-rootfs/usr/local/rust/" || return 1
        if [[ -d $sysroot/libexec ]]; then
            cp -a "$sysroot/libexec" "$work/builder-rootfs/usr/local/rust/" || return 1
        fi
        tar -C "$work/builder-rootfs" -c . | podman import -q \
            --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV CARGO_HOME=/usr/local/cargo' \
            - $builder || return 1
    fi
}

# Builds IMAGE from docker/Dockerfile with podman (base images first, when missing), and
# prints the build time and the image's size. crates.io is reached through this machine's CA
# bundle, mounted into the build read-only, never copied into an image. Call podman_env first.
build_image() { # image
    local image=$1 work=$ROOT/target/container start build_s size
    base_images || return 1
    echo "== podman build -f docker/Dockerfile -t $image"
    start=$(date +%s)
    # Docker's image format: OCI images have no HEALTHCHECK.
    podman build --format docker -f "$ROOT/docker/Dockerfile" -t "$image" \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro "$ROOT" \
        >"$work/build.log" 2>&1 ||
        { tail -30 "$work/build.log"; echo "FAIL: podman build (full log: $work/build.log)"; return 1; }
    build_s=$(($(date +%s) - start))
    size=$(podman image inspect --format '{{.Size}}' "$image") || return 1
    echo "built in ${build_s} s; image size $((size / 1000000)) MB ($size bytes)"
}
