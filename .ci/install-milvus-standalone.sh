#!/usr/bin/env bash
# Install the real Milvus standalone server (PyPI package `milvus`, C++/Go binaries with
# embedded etcd and local storage) into its own venv, .venv-milvus at the repo root.
#
# It gets its own venv because the package's client extra pins an old pymilvus; we
# install the server package alone (it has no Python dependencies) and talk to it with
# the project's pymilvus. tests/support/milvus_standalone.py starts it.
#
# Also extracts the server binaries once into .venv-milvus/milvus-home/bin (about
# 250 MB) so that each test server does not decompress its own copy.
#
# Idempotent and quick when already installed. Runs on a bare Debian 12: the bundled
# binaries carry their own libstdc++/libgomp/libopenblas/libgfortran and need only libc6;
# the one Debian package it may need is python3-venv (for `python3 -m venv`).
#
# Usage: .ci/install-milvus-standalone.sh        (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

MILVUS_VERSION="2.3.5"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REPO_ROOT}/.venv-milvus"
BIN_HOME="${VENV}/milvus-home"
MARKER="${BIN_HOME}/.installed-${MILVUS_VERSION}"
PYTHON="${PYTHON:-python3}"

log() { echo "install-milvus-standalone: $*" >&2; }

venv_ok() {
    [ -x "${VENV}/bin/python" ] &&
        "${VENV}/bin/python" -c "import milvus, sys; sys.exit(milvus.__version__ != '${MILVUS_VERSION}')" 2>/dev/null
}

if venv_ok && [ -f "${MARKER}" ] && [ -x "${BIN_HOME}/bin/milvus" ]; then
    log "milvus ${MILVUS_VERSION} already installed in ${VENV}"
    exit 0
fi

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "need Debian package(s) $* but apt-get is not available"
        exit 1
    fi
    log "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 1. An interpreter that can make venvs (Debian's python3 needs python3-venv for ensurepip).
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi
if [ ! -x "${VENV}/bin/python" ] && ! "${PYTHON}" -c "import ensurepip, venv" >/dev/null 2>&1; then
    py_ver="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    apt_install "python${py_ver}-venv"
fi

# 2. The venv (recreated if broken, e.g. its base interpreter went away).
if [ -e "${VENV}" ] && ! "${VENV}/bin/python" -c "import sys" >/dev/null 2>&1; then
    log "removing broken ${VENV}"
    rm -rf "${VENV}"
fi
if [ ! -x "${VENV}/bin/python" ]; then
    log "creating ${VENV}"
    "${PYTHON}" -m venv "${VENV}"
fi

# 3. The server package only (no [client] extra: it would pin an old pymilvus).
if ! venv_ok; then
    log "pip install milvus==${MILVUS_VERSION}"
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        "milvus==${MILVUS_VERSION}"
fi
venv_ok || { log "milvus ${MILVUS_VERSION} not importable from ${VENV}"; exit 1; }

# 4. Extract the bundled binaries once (md5-checked; skipped when up to date).
rm -f "${MARKER}"
log "extracting server binaries into ${BIN_HOME}/bin"
"${VENV}/bin/python" -c "import sys, milvus; milvus._initialize_data_files(sys.argv[1])" "${BIN_HOME}"

# 5. Check that the binary loads on this machine (all shared libraries resolve).
missing="$(LD_LIBRARY_PATH="${BIN_HOME}/bin" ldd "${BIN_HOME}/bin/milvus" | grep 'not found' || true)"
if [ -n "${missing}" ]; then
    log "milvus binary has unresolved libraries:"
    echo "${missing}" >&2
    exit 1
fi
if ! LD_LIBRARY_PATH="${BIN_HOME}/bin" "${BIN_HOME}/bin/milvus" 2>&1 | grep -q 'milvus run'; then
    log "milvus binary does not run:"
    LD_LIBRARY_PATH="${BIN_HOME}/bin" "${BIN_HOME}/bin/milvus" >&2 || true
    exit 1
fi

touch "${MARKER}"
log "milvus ${MILVUS_VERSION} installed in ${VENV}"
