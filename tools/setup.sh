#!/usr/bin/env bash
# Install everything dfs needs on a fresh Debian/Ubuntu machine: libfuse3 and
# friends via apt-get (when root), then the Python packages into ./.venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q libfuse3.so.3 || need_apt+=(libfuse3-3)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v git >/dev/null 2>&1 || need_apt+=(git)
if ((${#need_apt[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: apt-get install ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || true
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (need root for apt-get)" >&2
    fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.dfs-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e '.[test]' >.venv/install.log 2>&1; then
        cat .venv/install.log >&2
        exit 1
    fi
    touch "$stamp"
fi
.venv/bin/python -c "import dfs, zmq, msgpack, xxhash, zstandard, pyfastcdc, rich" \
    || { echo "setup: Python packages failed to install" >&2; exit 1; }
# bytecode for our own modules: where PYTHONDONTWRITEBYTECODE is set (as on the
# CI box) every command and server would otherwise compile them afresh (~40 ms
# each); a stale .pyc is ignored by Python, never run
.venv/bin/python -m compileall -q dfs metadata chunkserver tools >/dev/null 2>&1 || true
