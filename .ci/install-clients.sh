#!/usr/bin/env bash
# Install what the TypeScript, C++ and Go clients need to build and test (`make clients-test`):
# Debian's protoc, gRPC C++ and Go packages, Node.js if missing, and clients/typescript's npm packages
# (from its lockfile; @bufbuild/buf for `buf lint`/`buf breaking` comes with them).
#
# Idempotent and quick when already installed: apt runs only for packages that are missing, npm only when
# package-lock.json changed since the last install. Runs on a bare Debian 12 as root (or with sudo).
#
# Go: Debian's packages only, built in GOPATH mode (no module proxy). The grpc package is satisfied by
# golang-github-golang-protobuf-1-3-dev unless 1-5 is asked for by name, and the client then panics at run
# time ("protobuf tag not enough fields"), so it is named here.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS_DIR="${REPO_ROOT}/clients/typescript"
PACKAGES=(
    cmake g++ make pkg-config
    protobuf-compiler libprotobuf-dev libgrpc++-dev protobuf-compiler-grpc
    golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
    protoc-gen-go protoc-gen-go-grpc
)

log() { echo "install-clients: $*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q "install ok installed" || missing+=("${package}")
done
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { log "need Debian packages ${missing[*]} but apt-get is not available"; exit 1; }
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "${node_major}" -lt 18 ]; then
    log "Node.js ${node_major} is too old: the TypeScript client needs 18 or newer (node --test)"
    exit 1
fi

# npm ci when the lockfile is newer than the last install (npm writes node_modules/.package-lock.json).
if [ ! -f "${TS_DIR}/node_modules/.package-lock.json" ] ||
    [ "${TS_DIR}/package-lock.json" -nt "${TS_DIR}/node_modules/.package-lock.json" ]; then
    log "npm ci in clients/typescript"
    (cd "${TS_DIR}" && npm ci --no-audit --no-fund --loglevel=error)
fi
log "ready: protoc $(protoc --version | cut -d' ' -f2), $(go version | cut -d' ' -f3), node $(node --version)"
