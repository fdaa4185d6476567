"""The local cache of remote artifacts: download and verify once, reuse, evict by size.

:func:`cached_artifact` gives a local directory for any artifact URI (see
:mod:`scoreops.storage.artifacts` for what makes an artifact complete); remote artifacts are
kept under :func:`artifact_cache_dir`, and :func:`evict_artifact_cache` keeps that directory
under ``$SCOREOPS_ARTIFACT_CACHE_MAX_BYTES``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from scoreops.storage import local
from scoreops.storage.artifacts import (
    MANIFEST_NAME,
    UriLike,
    _load,
    _parse_manifest,
    _read_manifest_bytes,
    _size_mismatches,
    read_manifest,
)
from scoreops.storage.errors import IncompleteArtifactError
from scoreops.storage.uri import LocalLocation, parse

__all__ = ["artifact_cache_dir", "cached_artifact", "evict_artifact_cache"]


def artifact_cache_dir() -> Path:
    """``$SCOREOPS_ARTIFACT_CACHE``, else ``$SCOREOPS_CACHE/artifacts`` (default
    ``~/.cache/scoreops/artifacts``)."""
    env = os.environ.get("SCOREOPS_ARTIFACT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("SCOREOPS_CACHE")
    if base:
        return Path(base).expanduser() / "artifacts"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "scoreops" / "artifacts"


def cached_artifact(uri: UriLike) -> Path:
    """A local directory holding the complete artifact at ``uri``.

    Local artifacts are returned in place (after the cheap completeness check). Remote ones
    are downloaded and verified once into ``artifact_cache_dir()/<hash>``, where the hash
    covers the URI and the manifest's bytes: a replaced artifact gets a fresh directory.
    Concurrent callers (threads or processes) download it only once.
    """
    target = os.fspath(uri).rstrip("/") or os.fspath(uri)
    loc = parse(target)
    if isinstance(loc, LocalLocation):
        manifest = read_manifest(target)
        problems = _size_mismatches(target, manifest)
        if problems:
            raise IncompleteArtifactError(f"artifact {target} is incomplete: {'; '.join(problems)}")
        return loc.path
    raw = _read_manifest_bytes(target)
    _parse_manifest(target, raw)
    digest = hashlib.sha256(
        target.encode() + b"\n" + hashlib.sha256(raw).hexdigest().encode()
    ).hexdigest()[:32]
    cache = artifact_cache_dir()
    dest = cache / digest
    if _cached_ok(dest, raw):
        _touch(dest)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{digest}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _cached_ok(dest, raw):
            return dest
        tmp = cache / f"{local.TMP_PREFIX}{digest}.{uuid.uuid4().hex[:12]}"
        try:
            _load(target, raw, tmp, verify=True)
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
    evict_artifact_cache(keep=(dest,))
    return dest


DEFAULT_CACHE_MAX_BYTES = 50 * 2**30
"""Default bound of the artifact cache (``$SCOREOPS_ARTIFACT_CACHE_MAX_BYTES`` overrides)."""
_RECENT_SECONDS = 600.0


def _touch(dest: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(dest)


def _cache_limit() -> int:
    raw = os.environ.get("SCOREOPS_ARTIFACT_CACHE_MAX_BYTES")
    if not raw:
        return DEFAULT_CACHE_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"SCOREOPS_ARTIFACT_CACHE_MAX_BYTES must be a whole number of bytes, got {raw!r}"
        ) from None
    if value < 0:
        raise ValueError(f"SCOREOPS_ARTIFACT_CACHE_MAX_BYTES must be >= 0, got {value}")
    return value


def _entry_size(entry: Path) -> int:
    try:
        manifest = json.loads((entry / MANIFEST_NAME).read_bytes())
        return int(manifest.get("total_size", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def evict_artifact_cache(
    max_bytes: int | None = None, *, keep: Iterable[Path] = (), now: float | None = None,
) -> list[Path]:
    """Remove the least recently used downloaded artifacts until the cache holds at most
    ``max_bytes`` (default ``$SCOREOPS_ARTIFACT_CACHE_MAX_BYTES``, else 50 GiB); returns
    what was removed.

    An entry is "used" when :func:`cached_artifact` returns it (its directory's mtime).
    Never removed: the ``keep`` entries, entries used in the last ten minutes (another
    process may be reading them), and entries whose download lock another process holds.
    A removed entry is renamed away first, so a reader never sees half of one.
    """
    import time

    limit = _cache_limit() if max_bytes is None else max_bytes
    cache = artifact_cache_dir()
    if not cache.is_dir():
        return []
    now = time.time() if now is None else now
    kept = {Path(k).resolve() for k in keep}
    entries = []
    for entry in cache.iterdir():
        if entry.name.startswith(".") or entry.name.startswith(local.TMP_PREFIX):
            continue
        if entry.is_dir():
            entries.append((entry.stat().st_mtime, entry, _entry_size(entry)))
    total = sum(size for _, _, size in entries)
    removed: list[Path] = []
    for mtime, entry, size in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry.resolve() in kept or now - mtime < _RECENT_SECONDS:
            continue
        with (cache / f".{entry.name}.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being downloaded or replaced right now
            doomed = cache / f"{local.TMP_PREFIX}evict.{entry.name}.{uuid.uuid4().hex[:8]}"
            try:
                entry.rename(doomed)
            except OSError:
                continue
        shutil.rmtree(doomed, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def _cached_ok(dest: Path, raw: bytes) -> bool:
    try:
        return (dest / MANIFEST_NAME).read_bytes() == raw
    except OSError:
        return False
