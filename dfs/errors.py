"""Error codes shared by every service, and the exception that carries them.

Codes are short strings: POSIX errno names where one fits (so the FUSE client
can map them straight to an errno), and a few dfs-specific names otherwise.
"""

from __future__ import annotations

import errno

# dfs-specific codes (no errno fits, or the distinction matters to callers)
NOT_LEADER = "NOT_LEADER"  # metadata follower: retry on the leader named in the reply
HASH_MISMATCH = "HASH_MISMATCH"  # chunk content does not match its SHA-256 id
CORRUPT = "CORRUPT"  # stored chunk failed its checksum; it is not served
TIMEOUT = "TIMEOUT"  # no reply within the deadline
UNAVAILABLE = "UNAVAILABLE"  # no server could be reached / not enough replicas
BAD_MESSAGE = "EBADMSG"  # malformed frame or header
UNKNOWN_OP = "ENOSYS"  # operation not known to this service
TOO_BIG = "E2BIG"  # header or data frame over the limit
STALE = "ESTALE"  # version check failed (compare-and-set lost)

# codes that are not errno names, mapped to the errno a POSIX caller should see
_EXTRA_ERRNO = {
    NOT_LEADER: errno.EAGAIN,
    HASH_MISMATCH: errno.EIO,
    CORRUPT: errno.EIO,
    TIMEOUT: errno.ETIMEDOUT,
    UNAVAILABLE: errno.EIO,
}


class DfsError(Exception):
    """An error with a machine-readable code and a message a person can read."""

    def __init__(self, code: str, message: str = "", **details: object) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code
        self.details = details

    @property
    def errno(self) -> int:
        """The POSIX errno for this error (EIO when nothing fits)."""
        return errno_for(self.code)

    def to_wire(self) -> dict[str, object]:
        out: dict[str, object] = {"code": self.code, "msg": self.message}
        if self.details:
            out["details"] = self.details
        return out


def errno_for(code: str) -> int:
    """Map an error code to an errno number (EIO for unknown codes)."""
    if code in _EXTRA_ERRNO:
        return _EXTRA_ERRNO[code]
    return getattr(errno, code, errno.EIO) if code.startswith("E") else errno.EIO
