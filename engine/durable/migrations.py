"""Schema version bookkeeping shared by every store backend: one runner, numbered migrations.

A backend keeps its migrations as a tuple of scripts (entry ``n`` upgrades version ``n`` to
``n + 1``; released entries are never edited, new ones are appended) and its applied versions
in a ``schema_migrations`` table (a table, not a comment or a file: it survives a restore with
the data it describes). :func:`run_migrations` applies the missing ones in order through a
:class:`MigrationTarget`, each with its bookkeeping row in one transaction, and refuses a
database whose schema is newer than the code. Taking a cross-process lock around the run is the
backend's business. This module must not hold SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.errors import StorageFailure


class SchemaTooNew(StorageFailure):
    """The database was migrated by a newer radflow than this one."""

    reason = "schema_too_new"


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    current: int  # the highest version applied to the database
    latest: int  # the highest version this code knows

    @property
    def pending(self) -> tuple[int, ...]:
        return tuple(range(self.current + 1, self.latest + 1))

    @property
    def too_new(self) -> bool:
        return self.current > self.latest


class MigrationTarget(Protocol):
    """One backend's side of a migration run (synchronous, on the backend's own connection)."""

    def current_version(self) -> int:
        """The highest applied version (0 for an empty database); creates the bookkeeping
        table if needed."""
        ...

    def apply(self, version: int, script: str) -> None:
        """Run ``script`` and record ``version`` in one transaction."""
        ...


def check_not_too_new(status: SchemaStatus) -> None:
    if status.too_new:
        raise SchemaTooNew(
            f"the database schema is version {status.current}, newer than this radflow "
            f"understands ({status.latest}): run the radflow version that migrated it, or a "
            "newer one")


def run_migrations(target: MigrationTarget, scripts: Sequence[str]) -> list[int]:
    """Apply the missing migrations in order; the versions applied."""
    status = SchemaStatus(target.current_version(), len(scripts))
    check_not_too_new(status)
    for version in status.pending:
        target.apply(version, scripts[version - 1])
    return list(status.pending)
