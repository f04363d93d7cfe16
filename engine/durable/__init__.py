"""Durable state: the spool (object bytes on disk) and the store (journal, worklist, outbox).

Nothing is acknowledged to a peer before this layer says it is durable. Callers use the
:class:`~engine.durable.store.Store` interface and never write SQL themselves.
"""
