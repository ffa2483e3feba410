#!/usr/bin/env bash
# The Debian packages the crates need to build (librdkafka builds with cmake and links SSL, SASL,
# zlib and zstd; RocksDB's bindings are generated with libclang), and one function that installs
# the missing ones. The one list: .ci/run, scripts/demo.sh and the Dockerfile's builder stage use it.
#
#   bash scripts/build-packages.sh            installs what is missing (sudo when not root)
#   bash scripts/build-packages.sh --list     prints the list
#   source scripts/build-packages.sh          defines BUILD_PACKAGES and install_build_packages

BUILD_PACKAGES=(
    cmake
    clang
    libclang-dev
    libcurl4-openssl-dev
    libssl-dev
    libsasl2-dev
    zlib1g-dev
    libzstd-dev
    pkg-config
)

# Prints the packages of BUILD_PACKAGES that are not installed, one a line.
missing_build_packages() {
    local p
    for p in "${BUILD_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
            echo "$p"
        fi
    done
}

# Installs the missing build packages with apt-get (through sudo when not root). When that cannot
# be done (no apt-get, no sudo, no permission), says which packages are needed and fails.
install_build_packages() {
    local missing
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "build packages: not a Debian-based system; make sure these (or your distribution's equivalents) are installed: ${BUILD_PACKAGES[*]}" >&2
        return 0
    fi
    mapfile -t missing < <(missing_build_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "build packages: all installed (${BUILD_PACKAGES[*]})"
        return 0
    fi
    echo "build packages: installing ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo -E)
        else
            echo "build packages: missing ${missing[*]}, and this user is not root and has no sudo." >&2
            echo "  Install them as root: apt-get install -y ${missing[*]}" >&2
            return 1
        fi
    fi
    if ! { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null; }; then
        echo "build packages: could not install ${missing[*]}." >&2
        echo "  Install them yourself: apt-get install -y ${missing[*]}" >&2
        return 1
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        --list) printf '%s\n' "${BUILD_PACKAGES[@]}" ;;
        "") install_build_packages ;;
        *) echo "usage: $0 [--list]" >&2; exit 2 ;;
    esac
fi
