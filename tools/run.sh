#!/usr/bin/env bash
# The main job: install what is needed, start a local cluster (3 metadata nodes,
# 3 chunkservers) in ./cluster, show a put and a get, and mount it at ./mnt.
#   tools/run.sh            start (or reuse) the cluster and demo it
#   tools/run.sh down       unmount and stop it
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
DIR=${DFS_DIR:-$PWD/cluster}
MNT=${DFS_MNT:-$PWD/mnt}
export PATH="$PWD/.venv/bin:$PATH"
export DFS_CLUSTER="$DIR/cluster.toml"

if [[ ${1:-} == down ]]; then
    dfs umount "$MNT" 2>/dev/null || true
    exec dfs-admin cluster down --dir "$DIR"
fi

if ! dfs-admin status >/dev/null 2>&1; then
    dfs-admin cluster up --dir "$DIR"
fi
dfs-admin status

echo "--- put and get"
head -c 50000000 /dev/urandom > /tmp/dfs-demo.bin
dfs put -q /tmp/dfs-demo.bin /demo.bin
dfs get -q /demo.bin /tmp/dfs-demo.out
cmp /tmp/dfs-demo.bin /tmp/dfs-demo.out && echo "put/get: 50 MB byte-identical"
dfs ls -l /
dfs du /
rm -f /tmp/dfs-demo.bin /tmp/dfs-demo.out

echo "--- mount"
mkdir -p "$MNT"
if python -c "import dfs.fuse" 2>/dev/null && dfs mount "$MNT"; then
    ls -l "$MNT"
    echo "mounted at $MNT (dfs umount $MNT to unmount)"
fi
echo
echo "Cluster running. Use it with:  export DFS_CLUSTER=$DFS_CLUSTER PATH=$PWD/.venv/bin:\$PATH"
echo "Stop it with:                  tools/run.sh down"
