"""Index directories: written atomically, read back only when intact.

An index lives in a versioned folder ``<name>@<build id>`` next to a symlink
``<name>`` that points at the serving version.  A build writes a fresh
folder, records a manifest (format version, config hash, product count,
SHA-256 of every file), and only then swaps the symlink with one atomic
``rename``.  A build that fails leaves the previous index serving; readers
that hold the old files open keep working.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from indexer.types import EcomsearchError

# per index kind; bumped whenever its files change meaning (bm25 2: stored token ids per product;
# dense 2: product vectors and k-means product groups stored beside the FAISS index)
FORMAT_VERSIONS = {"bm25": 2, "dense": 2}
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


def write_index(final: Path, build: Callable[[Path], dict], kind: str, config_hash: str) -> dict:
    """Build an index into a fresh folder with ``build(folder) -> manifest extras``, then swap it in.

    One build per index at a time (a file lock); the folders of builds that were killed before their
    manifest was written are removed first."""
    import fcntl

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.build.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            remove_partial_builds(final)
            return _write_index(final, build, kind, config_hash)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_partial_builds(final: Path) -> list[Path]:
    """Remove ``<name>@<build id>`` folders without a manifest (a build killed half way), never the serving one."""
    serving = final.resolve() if final.is_symlink() else None
    removed = []
    for folder in final.parent.glob(f"{final.name}@*"):
        if folder.is_dir() and not folder.is_symlink() and folder != serving and not (folder / MANIFEST).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _write_index(final: Path, build: Callable[[Path], dict], kind: str, config_hash: str) -> dict:
    build_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    folder = final.parent / f"{final.name}@{build_id}"
    folder.mkdir()
    try:
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
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        _swap_in(final, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return manifest


def _swap_in(final: Path, folder: Path) -> None:
    previous = final.resolve() if final.is_symlink() else None
    if final.exists() and not final.is_symlink():
        # an index folder from a copy or an older layout: keep it aside until the swap is done
        aside = final.parent / f"{final.name}@replaced-{uuid.uuid4().hex[:6]}"
        final.rename(aside)
        previous = aside
    link_tmp = final.parent / f".{final.name}.link-{uuid.uuid4().hex[:6]}"
    os.symlink(folder.name, link_tmp)
    os.replace(link_tmp, final)  # atomic: readers see the old index or the new one
    if previous is not None and previous.exists() and previous != folder.resolve():
        shutil.rmtree(previous, ignore_errors=True)


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
        raise IndexLoadError(f"{folder}: index format version {version}, this engine reads version "
                             f"{FORMAT_VERSIONS[kind]}; rebuild it with `make index`")
    for rel, info in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise IndexLoadError(f"{folder}: file {rel} listed in the manifest is missing; rebuild with `make index`")
        if p.stat().st_size != info["bytes"]:
            raise IndexLoadError(f"{p}: size {p.stat().st_size} bytes, manifest says {info['bytes']}: "
                                 "the index is corrupt; rebuild with `make index`")
        if verify and sha256_file(p) != info["sha256"]:
            raise IndexLoadError(f"{p}: checksum mismatch: the index is corrupt; rebuild with `make index`")
    return manifest
