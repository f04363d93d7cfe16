"""The PostgreSQL backend of the store (``storage.backend: postgresql``): :class:`PostgresStore`
and its schema, for sites that run several radflow nodes on one database.

One module per idea (journal, hl7, worklist, mpps, routing, outbox, retention), each holding the
SQL of its tables as functions over a connection; they share helpers only through ``_common``
and the backend-neutral :mod:`engine.durable.rows`.
"""

from engine.durable.postgresql.schema import MIGRATIONS
from engine.durable.postgresql.store import PostgresStore

__all__ = ["MIGRATIONS", "PostgresStore"]
