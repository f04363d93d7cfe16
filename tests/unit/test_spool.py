"""The spool: durable-shaped writes, a layout built only from internal ids and the clock, space
checks, and crash leftovers."""

from __future__ import annotations

import calendar
import errno
import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.durable import spool as spool_module
from engine.durable.spool import Spool, new_object_id
from engine.errors import OutOfResources, StorageFailure
from engine.observability.metrics import REGISTRY

WHEN = calendar.timegm((2025, 3, 7, 9, 41, 5))  # 2025-03-07 09:41:05 UTC
HOUR_DIR = "objects/2025/03/07/09"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", min_free_bytes=0)
    s.open()
    return s


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_open_creates_the_layout(tmp_path: Path) -> None:
    s = Spool(tmp_path / "a" / "spool", min_free_bytes=0)
    s.open()
    assert s.tmp_dir.is_dir() and s.objects_dir.is_dir()
    s.open()  # idempotent


def test_write_puts_the_bytes_under_the_hour_of_receipt(spool: Spool) -> None:
    chunks = [b"\x00" * 128, b"DICM", b"meta", b"dataset" * 1000]
    whole = b"".join(chunks)
    oid = new_object_id()

    written = spool.write(oid, iter(chunks), when=WHEN)

    assert written.object_id == oid
    assert written.rel_path == f"{HOUR_DIR}/{oid}.dcm"
    assert spool.path_of(written.rel_path).read_bytes() == whole
    assert spool.read(written.rel_path) == whole
    assert written.size == len(whole)
    assert written.sha256 == hashlib.sha256(whole).hexdigest()
    assert list(spool.tmp_dir.iterdir()) == []  # no temp file on the way


def test_the_file_is_written_at_its_final_name_and_fsynced_without_a_rename(
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_open = os.fsync, os.rename, os.open
    opened: dict[int, str] = {}

    def tracking_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        opened[fd] = str(path)
        events.append(("open", str(path)))
        return fd

    def tracking_fsync(fd: int) -> None:
        events.append(("fsync", opened.get(fd, "?")))
        real_fsync(fd)

    def tracking_rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("rename", f"{src} -> {dst}"))
        real_rename(src, dst)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    monkeypatch.setattr(os, "rename", tracking_rename)
    oid = new_object_id()
    written = spool.write(oid, [b"abc"], when=WHEN)
    monkeypatch.undo()

    final = str(spool.root / written.rel_path)
    assert events == [("open", final), ("fsync", final)]


def test_a_new_hour_reports_every_new_directory_to_sync(spool: Spool) -> None:
    first = spool.write(new_object_id(), [b"a"], when=WHEN)
    # The new file made an entry in the hour folder, and mkdir made each new folder an entry in
    # its parent: all of them must be fsync'd before the journal row commits.
    assert set(first.dirs_to_sync) >= {
        HOUR_DIR,
        "objects/2025/03/07",
        "objects/2025/03",
        "objects/2025",
        "objects",
    }
    for rel in first.dirs_to_sync:
        assert (spool.root / rel).is_dir()

    # Until a commit has synced the new folder's chain, a second writer into the same hour
    # (which finds the folder already made) must ask for the whole chain too: its row could
    # otherwise commit before the first writer's batch made the folder's entry durable.
    second = spool.write(new_object_id(), [b"b"], when=WHEN + 60)
    assert set(second.dirs_to_sync) == set(first.dirs_to_sync)

    spool.sync_dirs(first.dirs_to_sync + second.dirs_to_sync)  # real directory fsyncs work
    third = spool.write(new_object_id(), [b"c"], when=WHEN + 120)
    assert third.dirs_to_sync == (HOUR_DIR,)


def test_the_path_depends_only_on_the_object_id_and_the_clock(spool: Spool) -> None:
    oid = new_object_id()
    written = spool.write(oid, [b"x"], when=WHEN)
    assert re.fullmatch(r"objects/\d{4}/\d{2}/\d{2}/\d{2}/[0-9a-f]{25}\.dcm", written.rel_path)
    assert (spool.root / written.rel_path).resolve().is_relative_to(spool.objects_dir.resolve())


def test_object_ids_are_unique_unguessable_and_time_ordered() -> None:
    ids = [new_object_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{25}", i) for i in ids)
    before = new_object_id()
    time.sleep(0.002)
    after = new_object_id()
    assert before[:13] < after[:13]
    assert len({i[13:] for i in ids}) == len(ids)  # the random part alone is unique here


def _fail_writes_with(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:  # the first chunk lands, the disk fills on the second
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr(spool_module.os, "write", failing_write)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_raises_out_of_resources_and_leaves_no_file(
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
) -> None:
    _fail_writes_with(monkeypatch, err)
    with pytest.raises(OutOfResources):
        spool.write(new_object_id(), [b"first chunk", b"second chunk"], when=WHEN)
    monkeypatch.undo()
    assert files_under(spool.root) == []
    assert not spool.has_room


def test_another_io_error_raises_storage_failure_and_leaves_no_file(
    spool: Spool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fail_writes_with(monkeypatch, errno.EIO)
    with pytest.raises(StorageFailure):
        spool.write(new_object_id(), [b"first chunk", b"second chunk"], when=WHEN)
    monkeypatch.undo()
    assert files_under(spool.root) == []
    assert spool.has_room  # an I/O error says nothing about free space


def test_a_failed_fsync_leaves_no_file(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file is already at its final name when fsync fails: it must go, or a later reader
    # could take bytes the disk never confirmed for a stored object.
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    with pytest.raises(StorageFailure):
        spool.write(new_object_id(), [b"data"], when=WHEN)
    monkeypatch.undo()
    assert files_under(spool.root) == []


def test_a_failing_chunk_source_leaves_no_file(spool: Spool) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first"
        raise RuntimeError("the sender went away")

    with pytest.raises(RuntimeError):
        spool.write(new_object_id(), chunks(), when=WHEN)
    assert files_under(spool.root) == []


def test_the_same_object_id_is_never_overwritten(spool: Spool) -> None:
    first = spool.write(new_object_id(), [b"the first file"], when=WHEN)
    with pytest.raises(StorageFailure):
        spool.write(first.object_id, [b"x"], when=WHEN)
    assert spool.read(first.rel_path) == b"the first file"


# --- space ---------------------------------------------------------------------------------------
def test_ensure_room_refuses_below_the_threshold(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    mib = 1024 * 1024
    spool.min_free_bytes = 100 * mib
    monkeypatch.setattr(spool, "free_bytes", lambda: 150 * mib)

    spool.ensure_room(10 * mib)  # 140 MiB would be left
    assert spool.has_room
    with pytest.raises(OutOfResources, match="150 MiB free"):
        spool.ensure_room(60 * mib)  # 90 MiB would be left
    assert not spool.has_room
    assert REGISTRY.get_sample_value("radflow_spool_low_space") == 1

    assert spool.refresh_free_space()  # free space is re-read: room again
    assert spool.has_room
    assert REGISTRY.get_sample_value("radflow_spool_low_space") == 0
    assert REGISTRY.get_sample_value("radflow_spool_free_bytes") == 150 * mib


def test_ensure_room_with_the_real_file_system(spool: Spool) -> None:
    spool.ensure_room(0)
    spool.min_free_bytes = spool.free_bytes() + 1024**4  # a TiB more than the disk has
    with pytest.raises(OutOfResources):
        spool.ensure_room(0)
    assert not spool.refresh_free_space()


# --- crash recovery ------------------------------------------------------------------------------
def test_clean_temp_removes_only_half_written_files(spool: Spool) -> None:
    for name in ("a.part", "b.part", "keep.txt"):
        (spool.tmp_dir / name).write_bytes(b"x")
    kept = spool.write(new_object_id(), [b"whole"], when=WHEN)

    assert spool.clean_temp() == 2
    assert sorted(p.name for p in spool.tmp_dir.iterdir()) == ["keep.txt"]
    assert spool.path_of(kept.rel_path).exists()
    assert spool.clean_temp() == 0


def test_recent_objects_lists_files_in_recently_touched_hour_folders(spool: Spool) -> None:
    now = time.time()
    recent = spool.write(new_object_id(), [b"new"], when=now)
    old = spool.write(new_object_id(), [b"old"], when=now - 10 * 86400)
    old_dir = spool.path_of(old.rel_path).parent
    ten_days_ago = now - 10 * 86400
    os.utime(old_dir, (ten_days_ago, ten_days_ago))
    (spool.path_of(recent.rel_path).parent / "notes.txt").write_text("not an object")

    found = dict(spool.recent_objects(window_seconds=2 * 86400))

    assert found == {recent.object_id: recent.rel_path}
    assert dict(spool.recent_objects(window_seconds=30 * 86400)) == {
        recent.object_id: recent.rel_path,
        old.object_id: old.rel_path,
    }


def test_remove_is_idempotent(spool: Spool) -> None:
    written = spool.write(new_object_id(), [b"x"], when=WHEN)
    spool.remove(written.rel_path)
    spool.remove(written.rel_path)
    assert not spool.path_of(written.rel_path).exists()


def test_one_verdict_a_full_disk_has_no_room_even_with_a_zero_threshold(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # min_free_mb: 0 at 0 bytes free: readiness and intake both say no.
    monkeypatch.setattr(spool, "free_bytes", lambda: 0)
    verdict = spool.verdict()
    assert not verdict.ok and "below threshold" in verdict.describe()
    assert not spool.refresh_free_space()
    assert not spool.has_room  # what HL7 intake asks
    with pytest.raises(OutOfResources):
        spool.ensure_room(0)  # what C-STORE intake asks
    monkeypatch.setattr(spool, "free_bytes", lambda: 4096)
    assert spool.verdict().ok and spool.refresh_free_space() and spool.has_room
    assert not spool.verdict(incoming=4096).ok
