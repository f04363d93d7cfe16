"""The store interface: every durable row radflow keeps, behind one typed async API.

Callers (ingress, pipeline, admin) depend only on :class:`Store` and the record types here; the
SQL lives in one backend module per database (``sqlite.py`` today; a PostgreSQL backend adds a
module and a branch in :func:`open_store`, not changes to callers). The store never decides
protocol answers: decisions it must make inside a transaction (duplicate SOP Instance UIDs) are
pure functions passed in from the domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from engine.settings import StorageSettings


class DuplicatePolicy(StrEnum):
    VERSION = "version"
    IGNORE = "ignore"
    REJECT = "reject"


class InstanceOutcome(StrEnum):
    """What the journal did with one received instance."""

    STORED = "stored"  # a new SOP Instance UID
    NEW_VERSION = "new_version"  # a known UID with different bytes, kept as a new version
    IDENTICAL = "identical"  # the same bytes again: nothing new kept
    IGNORED = "ignored"  # a known UID with different bytes, dropped by policy
    REJECTED = "rejected"  # a known UID with different bytes, refused by policy


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A received instance as the journal keeps it."""

    object_id: str
    spool_path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_ae: str
    called_ae: str
    peer_host: str
    listener: str
    size_bytes: int
    sha256: str
    received_at: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """A journal row as read back."""

    id: int
    version: int
    record: InstanceRecord
    routed_at: str | None
    superseded: bool


@dataclass(frozen=True, slots=True)
class InstanceCommit:
    """One instance to commit in a group commit, with the policy for a known UID."""

    record: InstanceRecord
    policy: DuplicatePolicy


@dataclass(frozen=True, slots=True)
class InstanceCommitResult:
    outcome: InstanceOutcome
    journal_id: int | None  # the new row's id (or the existing one for identical/ignored)
    version: int


def decide_duplicate(
    existing_sha256: str | None, existing_size: int | None, new: InstanceRecord,
    policy: DuplicatePolicy,
) -> InstanceOutcome:
    """The duplicate SOP Instance UID policy, pure so every backend applies it the same way."""
    if existing_sha256 is None:
        return InstanceOutcome.STORED
    if existing_sha256 == new.sha256 and existing_size == new.size_bytes:
        return InstanceOutcome.IDENTICAL
    return {
        DuplicatePolicy.VERSION: InstanceOutcome.NEW_VERSION,
        DuplicatePolicy.IGNORE: InstanceOutcome.IGNORED,
        DuplicatePolicy.REJECT: InstanceOutcome.REJECTED,
    }[policy]


class Store(Protocol):
    """What radflow needs from a database. Every method is safe to call from the loop."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def schema_version(self) -> int: ...

    async def commit_instances(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None
    ) -> list[InstanceCommitResult]:
        """Apply ``batch`` in one transaction. ``sync`` (a zero-argument callable) runs first,
        in the writer's thread, to make the spool's directory entries durable."""
        ...

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    async def list_instances(self, limit: int = 100, offset: int = 0) -> list[StoredInstance]: ...

    async def count_instances(self) -> int: ...

    async def known_object_ids(self, object_ids: Sequence[str]) -> set[str]: ...


def open_store(settings: StorageSettings) -> Store:
    """Build the configured backend (not yet opened)."""
    from engine.durable.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
