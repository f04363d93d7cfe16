"""The Query/Retrieve indexer: journal rows in, Q/R index rows out, off the C-STORE path.

:class:`QrIndexer` is woken by ``InstanceStored`` (and looks anyway every few seconds: the bus
may drop), reads the journal after its watermark in pages, reads each spooled file's header in
a worker thread with routing's fast reader (``engine.pipeline.header``: only the attributes a
query can match or return), and writes the page's index rows and the new watermark in one
store transaction. It starts from the watermark, so a restart (or a power cut, which takes the
un-fsync'd index rows and the watermark back together) re-reads only what is missing. A file it
cannot read is logged and left out of the index (the instance is still delivered as routed).
Among several workers or nodes on one database, only the one holding the store's lead for the
index runs it (the others would repeat its work); when that process dies, another takes over
at its next look. It never answers a peer and never changes the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from engine.durable.qr import KEYWORD_COLUMNS, QrIndexRow
from engine.durable.spool import Spool
from engine.durable.store import Store, StoredInstance
from engine.events import InstanceStored
from engine.observability.logging import about, get_logger
from engine.pipeline.header import read_header

log = get_logger("engine.pipeline")

_PAGE: Final = 500
#: the store's name for "the process that keeps the Q/R index" (see ``Store.hold_lead``)
LEAD_DUTY: Final = "qr-index"
_TAGS: Final = frozenset(int(t) for t in (tag_for_keyword(k) for k in KEYWORD_COLUMNS)
                         if t is not None)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a value that does not decode: the index keeps it empty
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def index_row(stored: StoredInstance, ds: Dataset) -> QrIndexRow:
    """The index row of one instance: the header's values, the journal's UIDs where the header
    lacks them (the journal's are what intake checked)."""
    rec = stored.record
    fallback = {"SOPInstanceUID": rec.sop_instance_uid, "SOPClassUID": rec.sop_class_uid,
                "StudyInstanceUID": rec.study_instance_uid or "",
                "SeriesInstanceUID": rec.series_instance_uid or "",
                "PatientID": rec.patient_id or "", "Modality": rec.modality or "",
                "AccessionNumber": rec.accession_number or ""}
    values = tuple(_text(ds, k) or fallback.get(k, "") for k in KEYWORD_COLUMNS)
    return QrIndexRow(stored.id, values)


class QrIndexer:
    """Keeps the Q/R index up with the journal."""

    def __init__(self, store: Store, spool: Spool, poll_seconds: float = 5.0) -> None:
        self._store = store
        self._spool = spool
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ask_again_at = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="qr-indexer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def on_instance_stored(self, event: InstanceStored) -> None:
        self._wake.set()

    async def caught_up(self) -> None:
        """Index everything journalled so far (tests, benchmarks, the CLI)."""
        while await self.index_once():
            pass

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                # One indexer among the workers and nodes on one database: the others would
                # read the same files and write the same rows again.
                if await self._lead():
                    while await self.index_once():
                        pass
            except Exception:
                log.exception("qr.index_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def _lead(self) -> bool:
        """Whether this process keeps the index now; a process that does not asks again only
        after a poll interval (not at every instance it stores)."""
        now = asyncio.get_running_loop().time()
        if now < self._ask_again_at:
            return False
        if await self._store.hold_lead(LEAD_DUTY):
            return True
        self._ask_again_at = now + self._poll
        return False

    async def index_once(self) -> int:
        """Index one page after the watermark; the number of journal rows taken in."""
        after = await self._store.qr_index_watermark()
        page = [s for s in await self._store.instances_after(after, _PAGE)]
        if not page:
            return 0
        rows = await asyncio.to_thread(self._rows, page)
        written = await self._store.qr_index(rows, page[-1].id)
        log.info("qr.indexed", journal_rows=len(page), indexed=written,
                 last_journal_id=page[-1].id)
        return len(page)

    def _rows(self, page: Sequence[StoredInstance]) -> list[QrIndexRow]:
        rows = []
        for stored in page:
            if stored.superseded:
                continue  # a newer version follows in the journal
            path = str(self._spool.path_of(stored.record.spool_path))
            try:
                ds = read_header(path, _TAGS)
            except Exception as exc:
                log.warning("qr.index_unreadable", journal_id=stored.id,
                            sop_instance_uid=stored.record.sop_instance_uid, detail=str(exc))
                continue
            with about(journal_id=stored.id, sop_instance_uid=stored.record.sop_instance_uid,
                       calling_ae=stored.record.calling_ae):
                rows.append(index_row(stored, ds))
        return rows
