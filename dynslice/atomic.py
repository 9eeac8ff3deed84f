"""Replacing a local folder all at once: the new folder is complete before the old one goes, and a kill at any
moment leaves either the old folder or the new one at the path (never half of each).

On Linux the two folders are exchanged with renameat2(RENAME_EXCHANGE), one atomic step; where that call is
missing the old folder is moved aside first, and `recover` puts it back if a kill came between the two moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot (no renameat2, or a file system
    without exchange support)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def staging_for(target: str | os.PathLike) -> Path:
    """A fresh sibling folder to build the new version of `target` in (same file system: renames stay cheap)."""
    target = Path(target)
    return target.with_name(f".{target.name}.staging-{uuid.uuid4().hex[:12]}")


def recover(target: str | os.PathLike) -> None:
    """Undo what a kill between the two moves of `replace_folder` left: the old folder moved aside and no folder
    at `target` (the old one comes back); leftover staging folders are removed."""
    target = Path(target)
    parked = sorted(target.parent.glob(f".{target.name}.old-*")) if target.parent.is_dir() else []
    if parked and not target.exists():
        os.replace(parked[-1], target)
        parked = parked[:-1]
        log.warning("restored %s after an interrupted replacement", target)
    for leftover in parked + sorted(target.parent.glob(f".{target.name}.staging-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `staging` at `target`, replacing what is there; `staging` is consumed."""
    staging, target = Path(staging), Path(target)
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old folder
        return
    parked = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(target, parked)
    os.replace(staging, target)
    shutil.rmtree(parked, ignore_errors=True)
