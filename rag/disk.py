"""Why a folder cannot be written: a read-only file system, a full disk, a refused permission.

Chroma reports a full or read-only disk as an internal error of its own ("Failed to apply logs to
the metadata segment", "attempt to write a readonly database"), which names neither the cause nor
the fix. When a write under a folder fails, ``disk_problem`` asks the file system directly.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

# Reserved once a write has failed, to tell a full disk from other faults. Big enough that a disk
# which just refused one of Chroma's writes refuses it too, small against any disk that is not full.
PROBE_BYTES = 4 << 20


def disk_problem(path: Path) -> str | None:
    """What keeps files under ``path`` (or its nearest existing parent) from being written, as a
    phrase ("its file system is mounted read-only"); None when a test write succeeds."""
    folder = _existing(Path(path))
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "its file system is mounted read-only"
        fd, probe = tempfile.mkstemp(prefix=".babelrag-space-probe-", dir=folder)
    except OSError as e:
        return os_problem(e, folder)
    try:
        os.posix_fallocate(fd, 0, PROBE_BYTES)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: no verdict
            return os_problem(e, folder)
    finally:
        os.close(fd)
        os.unlink(probe)
    return None


def os_problem(error: OSError, folder: Path) -> str:
    """An OSError from writing under ``folder``, as a phrase that says what is wrong."""
    if error.errno == errno.ENOSPC:
        free = shutil.disk_usage(folder).free
        return f"its disk is full ({free / 1e6:.1f} MB free)"
    if error.errno == errno.EDQUOT:
        return "the disk quota of this user is used up"
    if error.errno == errno.EROFS:
        return "its file system is mounted read-only"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "this process may not write there (permission denied)"
    return f"writing there fails ({error.strerror or error})"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
