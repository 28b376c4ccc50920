"""Benchmark of the FUSE mount against its baselines, in one run.

Targets, each measured the same way:
  local        a directory on the local disk
  passthrough  a bare passthrough FUSE file system (mfusepy on libfuse3, the same
               binding as the mount): the ceiling of a Python FUSE client
  dfs          ``dfs mount`` of a fresh local cluster (3 metadata nodes, 3 chunkservers,
               3 replicas)

Figures: sequential write of SIZE MiB of random data (dd bs=1M, conv=fsync;
local also writes 3 fsync'd copies at once, the ceiling of 3 replicas on one disk),
sequential read after a remount (local: after dropping the page cache),
untar of a real source tree (the Python stdlib) in files/s, reading that tree
back after a remount (files/s), and creates,
stats and unlinks per second of empty files.

    python -m tools.bench_fuse [--size-mb 1024] [--files 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- passthrough fs


def run_passthrough(src: str, mp: str) -> None:
    """A bare passthrough file system: every call straight to the local directory."""
    import errno

    import mfusepy
    from mfusepy import FuseOSError, Operations

    class Passthrough(Operations):
        use_ns = True

        def __init__(self, root: str) -> None:
            self.root = root

        def _p(self, path: str) -> str:
            return self.root + path

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            try:
                st = os.lstat(self._p(path))
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from None
            keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_rdev")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path: str, fh: int) -> list[Any]:
            # with use_ino the entries need their inode numbers (0 hides them)
            out: list[Any] = [".", ".."]
            with os.scandir(self._p(path)) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    out.append((e.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
            return out

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._p(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._p(path))

        def unlink(self, path: str) -> None:
            os.unlink(self._p(path))

        def rename(self, old: str, new: str) -> None:
            os.rename(self._p(old), self._p(new))

        def symlink(self, target: str, source: str) -> None:
            os.symlink(source, self._p(target))

        def readlink(self, path: str) -> str:
            return os.readlink(self._p(path))

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._p(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            os.lchown(self._p(path), uid, gid)

        def utimens(self, path: str, times: Any = None) -> None:
            os.utime(self._p(path), ns=times, follow_symlinks=False)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            os.truncate(self._p(path), length)

        def open(self, path: str, flags: int) -> int:
            return os.open(self._p(path), flags)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return os.pwrite(fh, data, offset)

        def flush(self, path: str, fh: int) -> None:
            pass

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            os.fsync(fh)

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._p(path))
            return {k: getattr(sv, k) for k in dir(sv) if k.startswith("f_")}

    mfusepy.FUSE(Passthrough(src), mp, foreground=True, fsname="passthrough", use_ino=True)


# ---------------------------------------------------------------- measurements


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dd(src: str, dst: str, sync: bool) -> None:
    args = ["dd", f"if={src}", f"of={dst}", "bs=1M", "status=none"]
    if sync:
        args.append("conv=fsync")
    subprocess.run(args, check=True)


def write_copies(source: Path, root: Path, copies: int = 3) -> float:
    """MB/s of writing ``source`` ``copies`` times at once, each fsync'd: what
    three replicas on this one disk allow (the ceiling of a replicated write)."""
    size = source.stat().st_size
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "dd",
                f"if={source}",
                f"of={root / f'copy{i}.bin'}",
                "bs=1M",
                "conv=fsync",
                "status=none",
            ]
        )
        for i in range(copies)
    ]
    for p in procs:
        p.wait()
    mbps = size / 1e6 / (time.perf_counter() - t0)
    for i in range(copies):
        (root / f"copy{i}.bin").unlink()
    return mbps


def drop_caches() -> None:
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def measure(
    name: str,
    root: Path,
    source: Path,
    tarball: Path,
    n_tar_files: int,
    n_files: int,
    remount: Callable[[], None],
) -> dict[str, float]:
    size = source.stat().st_size
    out: dict[str, float] = {}
    big = root / "big.bin"
    out["write_MBps"] = size / 1e6 / timed(lambda: dd(str(source), str(big), sync=True))
    remount()
    out["read_MBps"] = size / 1e6 / timed(lambda: dd(str(big), "/dev/null", sync=False))
    big.unlink()
    dest = root / "untar"
    dest.mkdir()
    t = timed(lambda: subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True))
    out["untar_files_per_s"] = n_tar_files / t
    remount()
    out["read_tree_files_per_s"] = n_tar_files / timed(lambda: read_tree(dest))
    small = root / "small"
    small.mkdir()
    names = [small / f"f{i:05d}" for i in range(n_files)]

    def creates() -> None:
        for p in names:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))

    out["creates_per_s"] = n_files / timed(creates)
    out["stats_per_s"] = n_files / timed(lambda: [os.stat(p) for p in names])
    out["unlinks_per_s"] = n_files / timed(lambda: [os.unlink(p) for p in names])
    print(f"  {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in out.items()), file=sys.stderr)
    return out


def read_tree(root: Path) -> int:
    """Read every file under ``root`` (many small files: open, read, close)."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass
            n += 1
    return n


def make_tarball(work: Path) -> tuple[Path, int]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tarball = work / "stdlib.tar"
    n = 0

    def keep(ti: tarfile.TarInfo) -> tarfile.TarInfo | None:
        nonlocal n
        parts = Path(ti.name).parts
        if "__pycache__" in parts or "site-packages" in parts or "test" in parts[1:2]:
            return None
        if ti.isfile():
            n += 1
        return ti

    with tarfile.open(tarball, "w") as t:
        t.add(stdlib, arcname="stdlib", filter=keep)
    return tarball, n


def wait_mounted(mp: Path, timeout: float = 20) -> None:
    from dfs.fuse.mount import find_mount

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find_mount(str(mp)) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{mp} did not mount")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="sequential file size (MiB)")
    ap.add_argument("--files", type=int, default=2000, help="files for create/stat/unlink")
    ap.add_argument("--only", help="comma-separated targets (local,passthrough,dfs)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--passthrough", nargs=2, metavar=("SRC", "MP"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.passthrough:
        run_passthrough(*a.passthrough)
        return 0
    from tests.test_fuse_support import mount, umount
    from tools.cluster import LocalCluster

    targets = (a.only or "local,passthrough,dfs").split(",")
    work = Path(tempfile.mkdtemp(prefix="dfs-bench-fuse-"))
    results: dict[str, Any] = {"size_mb": a.size_mb, "files": a.files}
    try:
        source = work / "random.bin"
        with open(source, "wb") as f:
            for _ in range(a.size_mb):
                f.write(os.urandom(1 << 20))
        tarball, n_tar = make_tarball(work)
        results["untar_tree_files"] = n_tar
        print(f"tree: {n_tar} files; sequential size {a.size_mb} MiB", file=sys.stderr)
        if "local" in targets:
            local = work / "local"
            local.mkdir()
            results["local"] = measure(
                "local", local, source, tarball, n_tar, a.files, lambda: drop_caches()
            )
            results["local"]["write_3copies_MBps"] = write_copies(source, local)
            print(
                f"  local, 3 fsync'd copies at once: {results['local']['write_3copies_MBps']:,.0f}"
                " MB/s",
                file=sys.stderr,
            )
        if "passthrough" in targets:
            back, mp = work / "pt-back", work / "pt-mnt"
            back.mkdir()
            mp.mkdir()
            cmd = [sys.executable, "-m", "tools.bench_fuse", "--passthrough", str(back), str(mp)]
            procs: list[subprocess.Popen] = []

            def pt_mount() -> None:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL))
                wait_mounted(mp)

            def pt_remount() -> None:
                subprocess.run(["fusermount3", "-u", str(mp)], check=True)
                procs[-1].wait(30)
                drop_caches()
                pt_mount()

            pt_mount()
            try:
                results["passthrough"] = measure(
                    "passthrough", mp, source, tarball, n_tar, a.files, pt_remount
                )
            finally:
                subprocess.run(["fusermount3", "-u", str(mp)], check=False)
                for p in procs:
                    p.wait(30)
        if "dfs" in targets:
            cluster = LocalCluster(work / "cluster", n_metadata=3, n_chunkservers=3).start()
            mp = Path(tempfile.mkdtemp(prefix="dfs-bench-mnt-"))
            try:
                mount(cluster.cluster_file, mp)

                def dfs_remount() -> None:
                    umount(cluster.cluster_file, mp)
                    mount(cluster.cluster_file, mp)

                results["dfs"] = measure("dfs", mp, source, tarball, n_tar, a.files, dfs_remount)
            finally:
                umount(cluster.cluster_file, mp)
                cluster.stop()
                mp.rmdir()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "dfs" in results and "passthrough" in results:
        d, p = results["dfs"], results["passthrough"]
        results["ratios_vs_passthrough"] = {k: d[k] / p[k] for k in d if p.get(k)}
    if "dfs" in results and "local" in results:
        cap = results["local"]["write_3copies_MBps"]
        results["dfs_write_vs_3copies"] = results["dfs"]["write_MBps"] / cap
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        keys = ["write_MBps", "read_MBps", "untar_files_per_s", "read_tree_files_per_s"]
        keys += ["creates_per_s"]
        keys += ["stats_per_s", "unlinks_per_s"]
        names = [t for t in ("local", "passthrough", "dfs") if t in results]
        print(f"{'':20}" + "".join(f"{n:>14}" for n in names))
        for k in keys:
            print(f"{k:20}" + "".join(f"{results[n][k]:>14,.0f}" for n in names))
        if "local" in results:
            print(f"{'write, 3 copies':20}{results['local']['write_3copies_MBps']:>14,.0f}")
        for k, v in (results.get("ratios_vs_passthrough") or {}).items():
            print(f"dfs / passthrough {k}: {v:.2f}")
        if "dfs_write_vs_3copies" in results:
            print(f"dfs write / 3 fsync'd local copies: {results['dfs_write_vs_3copies']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
