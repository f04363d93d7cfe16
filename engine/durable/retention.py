"""Retention: journal rows (and instances' spool files) leave once nothing needs them.

A router is not an archive. With ``storage.retention_days`` set, :class:`Retention` looks
once an hour for instances older than that. It takes only those that are routed, whose every
delivery is done, and that are in no open series/study group (the store decides, see
``sqlite/retention.py``). It removes their files, then their journal rows. A dead letter keeps its
instance until an operator retries or purges it. The file goes first: a crash in between leaves
rows without files, which the next pass deletes, never files without rows. 0 (the default)
keeps everything. With ``storage.journal_retention_days`` set, the same pass deletes HL7
messages and finished MPPS steps older than that, on the same rule (routed, delivered, not
awaited; see ``sqlite/retention.py``). It must not decide what is needed (the store does) and must
not run on the intake path.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from engine.durable.spool import Spool
from engine.durable.store import JournalPurge, Store
from engine.observability.logging import get_logger
from engine.observability.metrics import (
    JOURNAL_PURGED,
    SPOOL_PURGED_BYTES,
    SPOOL_PURGED_INSTANCES,
)

log = get_logger("engine.durable")

_PAGE = 1000


class Retention:
    """Purges instances past ``retention_days`` and HL7/MPPS journal rows past
    ``journal_retention_days`` (0: never), page by page."""

    def __init__(self, store: Store, spool: Spool, retention_days: float,
                 journal_retention_days: float = 0.0) -> None:
        self._store = store
        self._spool = spool
        self.retention_days = retention_days
        self.journal_retention_days = journal_retention_days

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0 or self.journal_retention_days > 0

    async def purge(self, now: dt.datetime | None = None) -> int:
        """One pass; the number of instances removed."""
        if self.retention_days <= 0:
            return 0
        now = now or dt.datetime.now(dt.UTC)
        cutoff = (now - dt.timedelta(days=self.retention_days)).isoformat()
        removed = freed = 0
        while True:
            page = await self._store.expired_instances(cutoff, _PAGE)
            if not page:
                break
            await asyncio.to_thread(self._remove_files, [e.spool_path for e in page])
            forgotten = await self._store.forget_instances([e.id for e in page])
            removed += forgotten
            freed += sum(e.size_bytes for e in page)
            if forgotten == 0 or len(page) < _PAGE:
                break
        if removed:
            SPOOL_PURGED_INSTANCES.inc(removed)
            SPOOL_PURGED_BYTES.inc(freed)
            log.info("durable.spool.purged", instances=removed, bytes=freed,
                     older_than_days=self.retention_days)
        return removed

    def _remove_files(self, paths: list[str]) -> None:
        for path in paths:
            self._spool.remove(path)

    async def purge_journal(self, now: dt.datetime | None = None) -> JournalPurge:
        """One pass over the HL7 and MPPS journals; what it deleted."""
        if self.journal_retention_days <= 0:
            return JournalPurge()
        now = now or dt.datetime.now(dt.UTC)
        cutoff = (now - dt.timedelta(days=self.journal_retention_days)).isoformat()
        hl7 = steps = 0
        while True:
            page = await self._store.purge_journal(cutoff, _PAGE)
            hl7 += page.hl7_messages
            steps += page.procedure_steps
            if page.hl7_messages < _PAGE and page.procedure_steps < _PAGE:
                break
        if hl7 or steps:
            JOURNAL_PURGED.labels("hl7_messages").inc(hl7)
            JOURNAL_PURGED.labels("procedure_steps").inc(steps)
            log.info("durable.journal.purged", hl7_messages=hl7, procedure_steps=steps,
                     older_than_days=self.journal_retention_days)
        return JournalPurge(hl7_messages=hl7, procedure_steps=steps)

    async def run(self, every: float = 3600.0) -> None:
        """Forever: a pass now, then one every ``every`` seconds."""
        while True:
            for name, purge in (("spool", self.purge), ("journal", self.purge_journal)):
                try:
                    await purge()
                except Exception:  # a failed pass is retried at the next; intake goes on
                    log.exception(f"durable.{name}.purge_failed")
            await asyncio.sleep(every)
