"""The intake journal's writer for DICOM instances (D1), a group commit over the store.

Association threads reach it through the bridge with one instance each; every instance waiting
at that moment is committed in one transaction, after the spool's directory entries of the whole
batch were fsync'd once. Only then is each caller resolved. It must not answer a peer itself and
must not swallow a failed commit: every waiting caller gets the exception.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.durable.group_commit import GroupCommit
from engine.durable.spool import Spool
from engine.durable.store import InstanceCommit, InstanceCommitResult, Store
from engine.observability.metrics import JOURNAL_COMMIT_BATCH, JOURNAL_COMMIT_SECONDS

_Item = tuple[InstanceCommit, tuple[str, ...]]


class JournalWriter:
    """Batches instance commits from many callers into few transactions."""

    def __init__(self, store: Store, spool: Spool) -> None:
        self._store = store
        self._spool = spool
        self._group: GroupCommit[_Item, InstanceCommitResult] = GroupCommit(
            "journal", self._commit_batch, batch_sizes=JOURNAL_COMMIT_BATCH,
            commit_seconds=JOURNAL_COMMIT_SECONDS)

    async def start(self) -> None:
        await self._group.start()

    async def stop(self) -> None:
        """Commit what is already queued, then stop."""
        await self._group.stop()

    async def commit(self, item: InstanceCommit, dirs_to_sync: tuple[str, ...]
                     ) -> InstanceCommitResult:
        """Queue one instance and wait until its batch is committed."""
        return await self._group.submit((item, dirs_to_sync))

    async def _commit_batch(self, batch: Sequence[_Item]) -> list[InstanceCommitResult]:
        dirs = {d for _, ds in batch for d in ds}
        return await self._store.commit_instances(
            [item for item, _ in batch], sync=lambda: self._spool.sync_dirs(dirs))
