# shellcheck shell=bash
# What the scripts share, written once. Sourced, not run: source "$(dirname "$0")/lib.sh".
# Sets ROOT (the workspace root, absolute) and defines functions; sets no options, changes no dir.
[[ ${BASH_SOURCE[0]} != "$0" ]] || { echo "scripts/lib.sh is sourced, not run" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

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
