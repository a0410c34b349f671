"""Index directories: written atomically, read back only when intact.

Each stage's index lives in a build folder ``<stage>@<build id>``.  The
serving version is ``<index_dir>/current``, a symlink to a small folder
``version@<id>`` with one link per stage; ``<index_dir>/<stage>`` links through
it (``current/<stage>``).  A build (or an update) writes fresh build folders,
records each one's manifest (format version, config hash, product count,
SHA-256 of every file), and only then switches ``current`` with one atomic
``rename``: every stage at once or none (:class:`IndexCommit`).  A build that
fails or is killed leaves the previous version serving; readers that hold the
old files open keep working.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from core.types import EcomsearchError

# per index kind; bumped whenever its files change meaning (bm25 2: stored token ids per product;
# dense 2: product vectors and k-means product groups stored beside the FAISS index)
FORMAT_VERSIONS = {"bm25": 2, "dense": 2, "suggest": 1}
MANIFEST = "manifest.json"


class IndexLoadError(EcomsearchError, RuntimeError):
    """An index directory is missing, from another format version, or corrupt."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _checksums(folder: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            out[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


CURRENT = "current"  # <index_dir>/current -> version@<id>/ : one link per stage, switched as one
VERSION = "version@"
BUILD_LOCK = ".build.lock"


def version_root(index_dir: Path) -> Path:
    """The folder holding the serving version's stage links, resolved once (``<index_dir>/current``), so that
    every stage a reader opens through it comes from one version; an index written before versions existed
    has its stage links in ``index_dir`` itself."""
    cur = Path(index_dir) / CURRENT
    return cur.resolve() if cur.is_symlink() else Path(index_dir)


def stage_folder(index_dir: Path, stage: str, root: Path | None = None) -> Path:
    """The build folder of ``stage`` in the version ``root`` (default: the serving one)."""
    return ((root or version_root(index_dir)) / stage).resolve()


class IndexCommit:
    """Stages built into fresh ``<stage>@<build id>`` folders, switched in together by :meth:`commit`: one
    atomic rename of ``<index_dir>/current`` to a version folder whose links name every stage's build (those
    not rebuilt keep theirs).  Readers see the old version or the new one, never a mix; a process killed at any
    moment leaves the last whole version serving (built folders it left are removed by the next build)."""

    def __init__(self, index_dir: Path):
        self.index_dir = Path(index_dir)
        self.built: dict[str, Path] = {}

    def build(self, stage: str, build: Callable[[Path], dict], kind: str, config_hash: str) -> dict:
        """Write one stage's build into a fresh folder (``build(folder) -> manifest extras``); not yet serving."""
        build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        folder = self.index_dir / f"{stage}@{build_id}"
        folder.mkdir()
        self.built[stage] = folder
        extras = build(folder) or {}
        manifest = {
            "kind": kind,
            "format_version": FORMAT_VERSIONS[kind],
            "config_hash": config_hash,
            "build_id": build_id,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extras,
            "files": _checksums(folder),
        }
        _write_durably(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        return manifest

    def commit(self) -> None:
        if self.built:
            switch_version(self.index_dir, {s: f.name for s, f in self.built.items()})

    def abort(self) -> None:
        for folder in self.built.values():
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def index_commit(index_dir: Path):
    """``with index_commit(dir) as c: c.build(...); c.build(...)``: every stage built, then one switch; an
    exception (or a kill) switches nothing.  One build per index folder at a time (a file lock)."""
    import fcntl

    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / BUILD_LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            recover(index_dir)
            c = IndexCommit(index_dir)
            try:
                yield c
            except BaseException:
                c.abort()
                raise
            c.commit()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def try_recover(index_dir: Path) -> bool:
    """:func:`recover` when no build holds the index folder now (a starting engine never waits for a build);
    False when one does or the folder is read-only."""
    import fcntl

    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return False
    try:
        with open(index_dir / BUILD_LOCK, "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                recover(index_dir)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except PermissionError:
        return False
    return True


def write_index(final: Path, build: Callable[[Path], dict], kind: str, config_hash: str) -> dict:
    """Build one index into a fresh folder with ``build(folder) -> manifest extras``, then switch it in."""
    final = Path(final)
    with index_commit(final.parent) as c:
        return c.build(final.name, build, kind, config_hash)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _link(target: str, where: Path) -> None:
    """Point the symlink ``where`` at ``target`` in one atomic rename."""
    tmp = where.parent / f".{where.name}.link-{uuid.uuid4().hex[:6]}"
    os.symlink(target, tmp)
    os.replace(tmp, where)


def _stage_links(index_dir: Path) -> dict[str, str]:
    """stage -> build folder name of the serving version (read from ``current``, or from the stage links of an
    index written before versions; a stage folder copied in as a plain directory is renamed to a build folder)."""
    cur = index_dir / CURRENT
    if cur.is_symlink():
        root = cur.resolve()
        return {p.name: os.readlink(p).rsplit("/", 1)[-1] for p in root.iterdir() if p.is_symlink()}
    links = {}
    for p in index_dir.iterdir():
        if p.name.startswith((".", VERSION)) or "@" in p.name or p.name == CURRENT:
            continue
        if p.is_symlink() and "@" in os.readlink(p):
            links[p.name] = os.readlink(p).rsplit("/", 1)[-1]
        elif p.is_dir() and not p.is_symlink() and (p / MANIFEST).is_file():
            aside = index_dir / f"{p.name}@copied-{uuid.uuid4().hex[:6]}"
            p.rename(aside)
            _link(aside.name, p)
            links[p.name] = aside.name
    return links


def switch_version(index_dir: Path, stages: dict[str, str]) -> None:
    """Make a new version (the serving one with ``stages``' build folders replaced) serve, in one rename."""
    index_dir = Path(index_dir)
    _link(_new_version(index_dir, {**_stage_links(index_dir), **stages}), index_dir / CURRENT)
    _fsync_dir(index_dir)
    recover(index_dir)


def _new_version(index_dir: Path, links: dict[str, str]) -> str:
    """A version folder with one link per stage to its build folder (not serving yet); returns its name."""
    version = index_dir / f"{VERSION}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    version.mkdir()
    for stage, folder in links.items():
        os.symlink(f"../{folder}", version / stage)
    _fsync_dir(version)
    return version.name


def recover(index_dir: Path) -> None:
    """Bring an index folder to its serving version (called under the build lock): an index from before
    versions gets one; stage links point through ``current``; build folders no version uses (a replaced build,
    a build killed before its switch) and old version folders are removed.  A half-switched state cannot
    outlive this: whatever was not switched in is dropped, the last whole version stays."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return
    links = _stage_links(index_dir)
    if not links:
        return
    cur = index_dir / CURRENT
    if not cur.is_symlink():
        _link(_new_version(index_dir, links), cur)
    serving = os.readlink(cur)
    for stage in links:
        where = index_dir / stage
        if where.is_symlink() or not where.exists():
            if not where.is_symlink() or os.readlink(where) != f"{CURRENT}/{stage}":
                _link(f"{CURRENT}/{stage}", where)
    used = set(links.values()) | {serving}
    for p in index_dir.iterdir():  # by name: the folder's own path may run through links
        if "@" not in p.name or p.name in used or p.is_symlink() or not p.is_dir():
            continue
        if p.name.startswith(VERSION) or p.name.split("@", 1)[0] in links or not (p / MANIFEST).is_file():
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(folder: Path, kind: str, verify: bool = True) -> dict:
    """Read and check an index folder's manifest; raise :class:`IndexLoadError` with the reason."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise IndexLoadError(f"no index at {folder} (no {MANIFEST}); build it with `make index`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexLoadError(f"{mpath}: corrupt manifest ({e}); rebuild with `make index`") from None
    if manifest.get("kind") != kind:
        raise IndexLoadError(f"{folder}: holds a {manifest.get('kind')!r} index, expected {kind!r}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSIONS[kind]:
        raise IndexLoadError(
            f"{folder}: index format version {version}, this engine reads version "
            f"{FORMAT_VERSIONS[kind]}; rebuild it with `make index`"
        )
    for rel, info in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise IndexLoadError(f"{folder}: file {rel} listed in the manifest is missing; rebuild with `make index`")
        if p.stat().st_size != info["bytes"]:
            raise IndexLoadError(
                f"{p}: size {p.stat().st_size} bytes, manifest says {info['bytes']}: "
                "the index is corrupt; rebuild with `make index`"
            )
        if verify and sha256_file(p) != info["sha256"]:
            raise IndexLoadError(f"{p}: checksum mismatch: the index is corrupt; rebuild with `make index`")
    return manifest
