"""Making file-system changes durable: the few lines every on-disk store needs."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str, flags: int = 0) -> None:
    """fsync a file (or, with O_DIRECTORY, a directory) by name."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (creates, renames, unlinks) durable."""
    fsync_path(path, os.O_DIRECTORY)
