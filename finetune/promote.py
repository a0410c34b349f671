"""Putting a retrained model folder in service, all at once, and taking it back.

A new model is written whole into a staging folder beside the serving one (same file system), flushed to disk,
then swapped in by one ``renameat2(RENAME_EXCHANGE)`` (Linux): at every instant the serving path holds either
the old complete folder or the new complete folder, never a mix or nothing.  The old folder is kept as
``<name>.previous`` (what :func:`rollback` swaps back).  Where the exchange is not available the swap is two
renames (the path is missing for an instant; a reload in that instant fails and the running models keep
serving).  A crash before the swap leaves only a stale staging folder, which the next run replaces.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2


def staging_folder(serving: Path) -> Path:
    """Where a new version of ``serving`` is written before the swap (emptied first)."""
    p = serving.with_name(serving.name + ".staging")
    if p.exists():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def previous_folder(serving: Path) -> Path:
    return serving.with_name(serving.name + ".previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _flush(folder: Path) -> None:
    """fsync every file of ``folder`` and the folder itself (a swapped-in model survives a power cut)."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def promote(staged: Path, serving: Path) -> Path | None:
    """Make the complete folder ``staged`` the one at ``serving``; the one it replaces becomes
    ``<serving>.previous`` (returned; None when nothing served before)."""
    staged, serving = Path(staged), Path(serving)
    _flush(staged)
    if not serving.exists():
        os.rename(staged, serving)
        return None
    prev = previous_folder(serving)
    if prev.exists():
        shutil.rmtree(prev)
    if _exchange(staged, serving):
        os.rename(staged, prev)  # the staging path now holds the old folder
    else:
        os.rename(serving, prev)
        os.rename(staged, serving)
    return prev


def rollback(serving: Path) -> None:
    """Swap the previous folder back in (and the rolled-back one becomes the previous)."""
    serving = Path(serving)
    prev = previous_folder(serving)
    if not prev.is_dir():
        raise FileNotFoundError(f"no previous version of {serving} to roll back to ({prev} does not exist)")
    if not _exchange(prev, serving):
        tmp = serving.with_name(serving.name + ".rollback")
        os.rename(serving, tmp)
        os.rename(prev, serving)
        os.rename(tmp, prev)
