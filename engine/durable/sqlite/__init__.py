"""The SQLite backend of the store (the embedded default): :class:`SqliteStore` and its schema.

One module per idea (journal, hl7, worklist, mpps, routing, outbox, retention), each holding the
SQL of its tables as functions over a connection; they share helpers only through ``_common``
and the backend-neutral :mod:`engine.durable.rows`.
"""

from engine.durable.sqlite.schema import MIGRATIONS
from engine.durable.sqlite.store import SqliteStore

__all__ = ["MIGRATIONS", "SqliteStore"]
