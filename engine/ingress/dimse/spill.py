"""Large C-STORE datasets go to a file while they arrive, not into memory.

pynetdicom collects a message's dataset fragments in a ``BytesIO``: a 2.5 GB multi-frame
object would be held whole (and copied once more when intake takes its value). This module
owns the one alternative: :class:`SpillingBuffer`, a ``BytesIO`` that keeps a C-STORE dataset
in memory up to a threshold and moves it to a file of its own once it grows past that (the
spool's ``tmp/`` folder by default, or a configured folder on any file system), and
:func:`install`, which gives every incoming DIMSE message of an association such a buffer and
removes a half-received file when the association ends. Small instances never touch the file
system here (their path is unchanged); only C-STORE requests spill (a C-FIND identifier or an
N-SET stays in memory, as pynetdicom decodes those from the buffer itself).

It must not judge or store the dataset: intake reads a spilled dataset through
:func:`opened`, which maps the file read-only (the structure check touches only element
headers) and streams it into the spool in bounded chunks.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage

from engine.observability.logging import get_logger

log = get_logger("engine.ingress.dimse")

#: the spill file's name ends like the spool's other temp files, so a crash leftover in the
#: spool's ``tmp/`` is removed at the next start with them
SPILL_SUFFIX = ".part"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class SpillPolicy:
    """How large a C-STORE dataset may grow in memory, and where a larger one goes."""

    threshold_bytes: int
    directory: Path


class SpillingBuffer(io.BytesIO):
    """A ``BytesIO`` (pynetdicom checks the type) that moves to a file past ``threshold``.

    ``may_spill`` is asked once, when the threshold is first crossed (pynetdicom has decoded
    the command set by then, so the message's type is known)."""

    def __init__(self, policy: SpillPolicy, may_spill: Callable[[], bool],
                 on_spill: Callable[[SpillingBuffer], None] | None = None) -> None:
        super().__init__()
        self._policy = policy
        self._may_spill = may_spill
        self._on_spill = on_spill
        self._file: BinaryIO | None = None
        self._size = 0
        self.path: Path | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self.path is not None

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self._file is None and self.path is None and \
                self._size + n > self._policy.threshold_bytes and self._may_spill():
            self._spill()
        if self._file is not None:
            self._file.write(data)
        else:
            super().write(data)
        self._size += n
        return n

    def _spill(self) -> None:
        self._policy.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="spill-", suffix=SPILL_SUFFIX,
                                    dir=self._policy.directory)
        self.path = Path(name)
        file = os.fdopen(fd, "wb", buffering=_READ_CHUNK)
        file.write(self.getbuffer())
        self._file = file
        if self._on_spill is not None:
            self._on_spill(self)
        # Give the memory back: the rest of the dataset goes to the file.
        self.seek(0)
        self.truncate(0)

    def getvalue(self) -> bytes:
        if self.path is None:
            return super().getvalue()
        self.finish()
        return self.path.read_bytes()

    def finish(self) -> None:
        """All fragments are in: flush and close the file (nothing more will be written)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Remove the spill file (the dataset is in the spool now, or it was refused)."""
        self.finish()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


@contextlib.contextmanager
def opened(buffer: SpillingBuffer) -> Iterator[tuple[mmap.mmap, Path]]:
    """A spilled dataset as a read-only map of its file (for the structure check: only the
    pages of element headers are touched) and the file's path (to stream it to the spool)."""
    assert buffer.path is not None
    buffer.finish()
    with open(buffer.path, "rb") as fh, \
            mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        yield mapped, buffer.path


def file_chunks(path: Path, chunk: int = _READ_CHUNK) -> Iterator[bytes]:
    """``path``'s bytes in chunks of at most ``chunk`` (never the whole file at once)."""
    with open(path, "rb", buffering=0) as fh:
        while data := fh.read(chunk):
            yield data


def install(assoc: Association, policy: SpillPolicy) -> None:
    """Give each incoming message of ``assoc`` (an acceptor whose threads have not started) a
    spilling buffer, and remove a half-received spill file when the association ends."""
    dimse = assoc.dimse
    receive = dimse.receive_primitive
    # Every buffer of this association that went to a file: whatever becomes of its message
    # (stored, refused, answered as invalid before intake saw it, cut off), its file goes
    # when the association ends at the latest.
    spilled: list[SpillingBuffer] = []
    assoc._radflow_spilled = spilled  # type: ignore[attr-defined]

    def receive_primitive(primitive: Any) -> None:
        if dimse.message is None:
            message = DIMSEMessage()
            message.data_set = SpillingBuffer(
                policy, lambda: type(message).__name__ == "C_STORE_RQ", spilled.append)
            dimse.message = message
        receive(primitive)

    dimse.receive_primitive = receive_primitive  # type: ignore[method-assign]


def discard_unfinished(assoc: Association) -> None:
    """The association ended: remove every spill file still there (a message cut off, or one
    answered without reaching intake)."""
    for buffer in getattr(assoc, "_radflow_spilled", ()):
        if buffer.spilled:
            log.info("ingress.dimse.c_store.partial_discarded", bytes=buffer.size)
            buffer.discard()
