"""Spool verification: every journalled instance's file checked against the size and SHA-256
recorded at intake (``radflow spool verify``).

Walks the journal in id order (keyset pages, so memory stays flat however many instances there
are) and reads each file once. It reports and never repairs: a damaged object's row and file
stay as they are for an operator to judge (resend it from the modality, or purge it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.durable.spool import Spool
from engine.durable.store import Store, StoredInstance

_PAGE = 500


@dataclass(frozen=True, slots=True)
class SpoolDamage:
    """One instance whose spool file is missing or not what intake recorded."""

    instance: StoredInstance
    problem: str  # "missing: ...", "unreadable: ..." or "damaged: recorded ..., found ..."


@dataclass(slots=True)
class VerifyCount:
    checked: int = 0
    damaged: int = 0


async def verify_spool(store: Store, spool: Spool, study_instance_uid: str | None = None,
                       count: VerifyCount | None = None) -> AsyncIterator[SpoolDamage]:
    """Yield every damaged or missing object (of one study, or all); ``count`` is updated."""
    count = count if count is not None else VerifyCount()
    after = 0
    while True:
        page = await store.instances_after(after, _PAGE, study_instance_uid)
        if not page:
            return
        for item in page:
            rec = item.record
            problem = await asyncio.to_thread(spool.damage, rec.spool_path, rec.size_bytes,
                                              rec.sha256)
            count.checked += 1
            if problem is not None:
                count.damaged += 1
                yield SpoolDamage(item, problem)
        after = page[-1].id
