"""The spool: received object bytes on the local (or shared) file system, written durably.

Owns the on-disk layout ``<spool>/objects/YYYY/MM/DD/HH/<object_id>.dcm`` and ``<spool>/tmp/``.
Paths are built only from internal ids and the clock, never from anything a peer sent. A write
goes straight to its final name (never over an existing file); :meth:`Spool.sync` then fsyncs
the file, and ``sync_dirs`` the directories its entry touched. They are separate so that
intake can fsync the file while the journal's writer fsyncs the directories and commits the
row. A file left by a crash mid-write has no row and is removed at the next start with the
other orphans; ``tmp/`` only holds leftovers of older versions' temp files. The spool checks
free space and refuses writes below the threshold. It knows nothing of DICOM and must not
touch the store.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import OutOfResources, StorageFailure
from engine.observability.metrics import SPOOL_FREE_BYTES, SPOOL_LOW_SPACE

_TMP_SUFFIX = ".part"


@dataclass(frozen=True, slots=True)
class SpooledObject:
    """A written file, with the directories whose entries must be fsync'd with it."""

    object_id: str
    rel_path: str
    size: int
    sha256: str
    dirs_to_sync: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SpaceVerdict:
    """Whether the spool has room, with the figures behind the answer."""

    ok: bool
    free_bytes: int
    min_free_bytes: int

    def describe(self) -> str:
        mib = 1024 * 1024
        return (f"{self.free_bytes // mib} MiB free, threshold {self.min_free_bytes // mib} MiB"
                + ("" if self.ok else " (below threshold)"))


_ID_LENGTH = 25


def new_object_id(node_id: str | None = None) -> str:
    """A time-ordered, unguessable id: 13 hex digits of microseconds, then 12 random ones;
    with ``node_id``, after it and a dash (``ct-node-1-0005f3...``), so a node tells its own
    files from those of the other nodes sharing the spool."""
    base = f"{time.time_ns() // 1000:013x}{secrets.token_hex(6)}"
    return f"{node_id}-{base}" if node_id else base


def object_node(object_id: str) -> str | None:
    """The node that wrote ``object_id``; None for a file of a version that did not say."""
    if len(object_id) > _ID_LENGTH + 1 and object_id[-_ID_LENGTH - 1] == "-":
        return object_id[:-_ID_LENGTH - 1]
    return None


class Spool:
    """Durable object files under one root directory."""

    def __init__(self, root: Path, min_free_bytes: int, node_id: str | None = None) -> None:
        self.root = root
        #: this node's name in the files it writes (one spool may be shared by several nodes)
        self.node_id = node_id
        self.tmp_dir = root / "tmp"
        self.objects_dir = root / "objects"
        self.min_free_bytes = min_free_bytes
        self._low = False
        # Hour folders whose own entry (and their parents') is known durable. A folder another
        # writer just created may not be: until one commit has synced its chain, every write
        # into it asks for the whole chain, so no row can commit ahead of its folder's entry.
        self._durable_dirs: set[str] = set()

    def open(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.refresh_free_space()

    # --- space -------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def verdict(self, incoming: int = 0, free: int | None = None) -> SpaceVerdict:
        """The one free-space verdict: readiness, HL7 intake and C-STORE intake all ask this.

        Room means that after ``incoming`` bytes more than ``min_free_bytes`` stay free: strict,
        so a full disk is never "ready" even with a threshold of 0 (a write there fails)."""
        if free is None:
            free = self.free_bytes()
        return SpaceVerdict(ok=free - incoming > self.min_free_bytes, free_bytes=free,
                            min_free_bytes=self.min_free_bytes)

    def refresh_free_space(self) -> bool:
        """Re-read free space; return ``True`` while there is enough room."""
        verdict = self.verdict()
        self._low = not verdict.ok
        SPOOL_FREE_BYTES.set(verdict.free_bytes)
        SPOOL_LOW_SPACE.set(1 if self._low else 0)
        return verdict.ok

    @property
    def has_room(self) -> bool:
        return not self._low

    def ensure_room(self, incoming: int = 0) -> None:
        """Raise :class:`OutOfResources` if writing ``incoming`` bytes would cross the threshold."""
        verdict = self.verdict(incoming)
        if not verdict.ok:
            self._low = True
            SPOOL_LOW_SPACE.set(1)
            raise OutOfResources(f"spool below its free-space threshold ({verdict.describe()})")

    # --- writing -----------------------------------------------------------------------------
    def write(self, object_id: str, chunks: Iterable[bytes], *, when: float | None = None,
              sync: bool = True) -> SpooledObject:
        """Write ``chunks`` under ``object_id``; on any failure nothing stays behind.

        ``sync=True`` fsyncs the file (not its directories) before returning; ``sync=False``
        leaves all of it to :meth:`sync`."""
        tm = time.gmtime(when if when is not None else time.time())
        rel_dir = f"objects/{tm.tm_year:04d}/{tm.tm_mon:02d}/{tm.tm_mday:02d}/{tm.tm_hour:02d}"
        rel_path = f"{rel_dir}/{object_id}.dcm"
        path = self.root / rel_path
        digest = hashlib.sha256()
        size = 0
        created = False
        try:
            dirs = [rel_dir]
            if rel_dir not in self._durable_dirs:
                (self.root / rel_dir).mkdir(parents=True, exist_ok=True)
                dirs = _dir_chain(rel_dir)
            # Straight to the final name, no temp file and rename: a file no committed row
            # names is an orphan whatever its state (its sender got no success status), and
            # the start-up sweep removes it. One metadata change fewer per object is about a
            # quarter of a millisecond per instance on this kind of disk.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            created = True
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    digest.update(view)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                        size += written
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            if created:
                path.unlink(missing_ok=True)
            if not isinstance(exc, OSError):
                raise
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                self._low = True
                raise OutOfResources(f"spool disk full: {exc.strerror}") from exc
            raise StorageFailure(f"spool write failed: {exc.strerror}") from exc
        return SpooledObject(object_id, rel_path, size, digest.hexdigest(), tuple(dirs))

    def sync(self, spooled: SpooledObject) -> None:
        """fsync a written file; its directory entries (``dirs_to_sync``) are the caller's to
        have fsync'd (the journal's writer does it beside this, see ``sync_dirs``).

        Raises :class:`StorageFailure` (the file's bytes may not be on disk: its row must not
        stand) and leaves the file where it is for the caller to remove."""
        self._sync(spooled.rel_path, ())

    def resync(self, rel_path: str) -> None:
        """fsync an existing file and every folder from its own up to the root (start-up
        recovery, where nothing is known of which entries reached the disk)."""
        self._sync(rel_path, _dir_chain(str(Path(rel_path).parent)))

    def is_whole(self, rel_path: str, size: int, sha256: str) -> bool:
        """Whether the file holds exactly ``size`` bytes with this SHA-256 (``False`` if it is
        missing or unreadable)."""
        return self.damage(rel_path, size, sha256) is None

    def damage(self, rel_path: str, size: int, sha256: str) -> str | None:
        """What is wrong with the file against its recorded size and SHA-256, or ``None``
        when it is whole: ``missing ...``, ``unreadable ...`` or ``damaged: recorded ...,
        found ...`` (both digests)."""
        digest = hashlib.sha256()
        got = 0
        try:
            with open(self.root / rel_path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    got += len(block)
        except FileNotFoundError:
            return "missing: the file is gone"
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        found = digest.hexdigest()
        if got == size and found == sha256:
            return None
        return (f"damaged: recorded {size} bytes sha256 {sha256}, found {got} bytes "
                f"sha256 {found}")

    def _sync(self, rel_path: str, rel_dirs: Iterable[str]) -> None:
        try:
            fd = os.open(self.root / rel_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.sync_dirs(rel_dirs)
        except OSError as exc:
            raise StorageFailure(f"spool fsync failed: {exc.strerror}") from exc

    def sync_dirs(self, rel_dirs: Iterable[str]) -> None:
        """fsync each directory once, so the entries created in it survive a crash."""
        ordered = sorted(set(rel_dirs), key=len, reverse=True)
        for rel in ordered:
            fd = os.open(self.root / rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if "." in ordered:
            # The whole chain of every folder in this set is now durable.
            self._durable_dirs.update(d for d in ordered if d.count("/") == 4)

    def remove(self, rel_path: str) -> None:
        (self.root / rel_path).unlink(missing_ok=True)

    def path_of(self, rel_path: str) -> Path:
        return self.root / rel_path

    def read(self, rel_path: str) -> bytes:
        return (self.root / rel_path).read_bytes()

    # --- crash recovery ----------------------------------------------------------------------
    def clean_temp(self) -> int:
        """Remove half-written files left by a crash; return how many there were."""
        count = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.name.endswith(_TMP_SUFFIX):
                os.unlink(entry.path)
                count += 1
        return count

    def new_id(self) -> str:
        return new_object_id(self.node_id)

    def owns(self, object_id: str) -> bool:
        """Whether this node's start-up recovery may judge the file: written by this node, or
        by a version that did not name nodes (which never shared a spool). Another node's file
        with no row yet may be one it is writing right now."""
        node = object_node(object_id)
        return node is None or node == self.node_id

    def recent_objects(self, window_seconds: float) -> Iterator[tuple[str, str]]:
        """``(object_id, rel_path)`` of this node's spool files (:meth:`owns`) in hour folders
        touched within the window."""
        horizon = time.time() - window_seconds
        for dirpath, _dirnames, filenames in os.walk(self.objects_dir):
            if os.stat(dirpath).st_mtime < horizon:
                continue
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.endswith(".dcm") and self.owns(name[:-4]):
                    yield name[:-4], f"{rel_dir}/{name}"

    def disk_usage(self) -> shutil._ntuple_diskusage:
        return shutil.disk_usage(self.root)


def _dir_chain(rel_dir: str) -> list[str]:
    """``rel_dir`` and each folder above it, up to the spool root (``"."``)."""
    chain = [rel_dir]
    parent = Path(rel_dir).parent
    while str(parent) not in (".", ""):
        chain.append(str(parent))
        parent = parent.parent
    return [*chain, "."]
