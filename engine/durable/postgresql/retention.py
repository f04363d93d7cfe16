"""PostgreSQL SQL of retention: which journal rows (and, for instances, files) nothing needs any
more, and their removal.

An instance may go once it is older than the retention, routed, every outbox row naming it is
delivered (``done``) or already purged, and it is in no open routing group. A ``pending``,
``leased`` or ``dead`` row keeps it: a dead letter can still be retried by an operator, so its
file stays until the dead letter is purged. :func:`forget` checks all of this again inside its
write transaction, so a row that became needed since :func:`expired` read it is kept. Every
function takes the connection it runs on; called through ``PostgresStore``.
This module must not touch files: the caller removes them.

HL7 messages and MPPS steps (:func:`purge_journal`) follow the same rule with their own
conditions, checked inside the one transaction that deletes them: a message that was routed, or
was answered AE/AR and so is never routed; a step that is DISCONTINUED, or COMPLETED and not
awaiting the instances that complete its study, whose every event is routed. Neither may have
an outbox row that is not ``done``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from engine.durable.postgresql._common import transaction
from engine.durable.store import ExpiredInstance, JournalPurge

Conn = psycopg.Connection[Any]

# The conditions, in one place for the read and for the re-check in the delete.
_NOT_NEEDED = """
    i.routed_at IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.source_table = 'instances'
                    AND o.source_id = i.id AND o.state != 'done')
    AND NOT EXISTS (SELECT 1 FROM routing_group_members m
                    JOIN routing_groups g ON g.id = m.group_id
                    WHERE m.instance_id = i.id AND g.state = 'open')
"""


def expired(conn: Conn, received_before: str, limit: int
            ) -> list[ExpiredInstance]:
    rows = conn.execute(
        "SELECT i.id, i.spool_path, i.size_bytes FROM instances i "
        f"WHERE i.received_at < %s AND {_NOT_NEEDED} ORDER BY i.received_at, i.id LIMIT %s",
        (received_before, limit)).fetchall()
    return [ExpiredInstance(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def forget(conn: Conn, ids: Sequence[int]) -> int:
    removed = 0
    with transaction(conn):
        still = [int(r[0]) for r in conn.execute(
            f"SELECT i.id FROM instances i WHERE i.id = ANY(%s) AND {_NOT_NEEDED} "
            "FOR UPDATE OF i", (list(ids),))]
        if still:
            conn.execute("DELETE FROM routing_group_members WHERE instance_id = ANY(%s)",
                         (still,))
            removed += conn.execute("DELETE FROM instances WHERE id = ANY(%s)",
                                    (still,)).rowcount
    return removed


_HL7_NOT_NEEDED = """
    (h.ack_code != 'AA' OR h.routed_at IS NOT NULL)
    AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.source_table = 'hl7_messages'
                    AND o.source_id = h.id AND o.state != 'done')
"""

# A COMPLETED step whose study is not complete yet is watched for its missing instances
# (``mpps.awaiting``): it stays, however old.
_STEP_NOT_NEEDED = """
    (s.status = 'DISCONTINUED'
     OR (s.status = 'COMPLETED' AND (s.complete_at IS NOT NULL OR NOT EXISTS (
         SELECT 1 FROM procedure_step_instances x WHERE x.step_id = s.id))))
    AND NOT EXISTS (
        SELECT 1 FROM procedure_step_events e WHERE e.step_id = s.id
        AND (e.routed_at IS NULL OR EXISTS (
            SELECT 1 FROM outbox o WHERE o.source_table = 'procedure_step_events'
            AND o.source_id = e.id AND o.state != 'done')))
"""


def purge_journal(conn: Conn, before: str, limit: int) -> JournalPurge:
    with transaction(conn):
        hl7 = conn.execute(
            "DELETE FROM hl7_messages WHERE id IN (SELECT h.id FROM hl7_messages h "
            f"WHERE h.received_at < %s AND {_HL7_NOT_NEEDED} ORDER BY h.id LIMIT %s)",
            (before, limit)).rowcount
        steps = [int(r[0]) for r in conn.execute(
            "SELECT s.id FROM procedure_steps s "
            f"WHERE s.updated_at < %s AND {_STEP_NOT_NEEDED} ORDER BY s.id LIMIT %s",
            (before, limit))]
        if steps:
            for table in ("procedure_step_instances", "procedure_step_events"):
                conn.execute(f"DELETE FROM {table} WHERE step_id = ANY(%s)", (steps,))
            conn.execute("DELETE FROM procedure_steps WHERE id = ANY(%s)", (steps,))
    return JournalPurge(hl7_messages=int(hl7), procedure_steps=len(steps))
