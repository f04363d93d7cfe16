"""The SQLite schema: numbered migrations, applied in order at open by the shared runner
(:mod:`engine.durable.migrations`).

The comments beside each entry say which module owns its SQL. Never edit a released entry;
append a new one (and the same version to every other backend's schema).
"""

from __future__ import annotations

import sqlite3

from engine.durable.migrations import run_migrations
from engine.durable.sqlite._common import transaction

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL UNIQUE,
        spool_path TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        version INTEGER NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        patient_id TEXT,
        accession_number TEXT,
        modality TEXT,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer_host TEXT NOT NULL,
        listener TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        received_at TEXT NOT NULL,
        superseded INTEGER NOT NULL DEFAULT 0,
        routed_at TEXT,
        UNIQUE (sop_instance_uid, version)
    );
    CREATE INDEX instances_study ON instances (study_instance_uid);
    CREATE INDEX instances_unrouted ON instances (id) WHERE routed_at IS NULL;
    """,
    # 2: the HL7 journal (raw bytes in the row: durable with the commit that answers AA) and
    # the worklist. Worklist columns are copies of ``data`` (the item as JSON) kept for the
    # indexes Modality Worklist queries use; names are folded per PN component group.
    """
    CREATE TABLE hl7_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sending_application TEXT,
        sending_facility TEXT,
        control_id TEXT,
        message_type TEXT,
        trigger_event TEXT,
        peer_host TEXT NOT NULL,
        listener TEXT NOT NULL,
        received_at TEXT NOT NULL,
        raw BLOB NOT NULL,
        ack_code TEXT NOT NULL,
        errors_json TEXT NOT NULL DEFAULT '[]',
        text TEXT,
        worklist_item_ids TEXT NOT NULL DEFAULT '[]',
        retryable INTEGER NOT NULL DEFAULT 0,
        UNIQUE (sending_application, sending_facility, control_id)
    );
    CREATE INDEX hl7_messages_ack ON hl7_messages (ack_code, id);
    CREATE TABLE worklist_items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        issuer_of_patient_id TEXT NOT NULL DEFAULT '',
        patient_name_norm TEXT NOT NULL DEFAULT '',
        patient_name_ideographic_norm TEXT NOT NULL DEFAULT '',
        patient_name_phonetic_norm TEXT NOT NULL DEFAULT '',
        accession_number TEXT NOT NULL DEFAULT '',
        requested_procedure_id TEXT NOT NULL DEFAULT '',
        study_instance_uid TEXT NOT NULL DEFAULT '',
        placer_order_number TEXT NOT NULL DEFAULT '',
        filler_order_number TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        scheduled_station_ae_title TEXT NOT NULL DEFAULT '',
        sps_start_date TEXT NOT NULL DEFAULT '',
        sps_start_time TEXT NOT NULL DEFAULT '',
        source TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX worklist_patient ON worklist_items (patient_id);
    CREATE INDEX worklist_accession ON worklist_items (accession_number);
    CREATE INDEX worklist_requested_procedure ON worklist_items (requested_procedure_id);
    CREATE INDEX worklist_study ON worklist_items (study_instance_uid);
    CREATE INDEX worklist_placer ON worklist_items (placer_order_number);
    CREATE INDEX worklist_filler ON worklist_items (filler_order_number);
    CREATE INDEX worklist_modality_date ON worklist_items (modality, sps_start_date);
    CREATE INDEX worklist_date ON worklist_items (sps_start_date);
    CREATE INDEX worklist_station_date ON worklist_items (scheduled_station_ae_title,
                                                         sps_start_date);
    CREATE INDEX worklist_name ON worklist_items (patient_name_norm);
    CREATE INDEX worklist_name_ideographic ON worklist_items (patient_name_ideographic_norm);
    CREATE INDEX worklist_name_phonetic ON worklist_items (patient_name_phonetic_norm);
    CREATE INDEX worklist_status ON worklist_items (status, updated_at)
    """,
    # 3: the transactional outbox (D3). A row freezes everything its sender needs in
    # ``payload`` (JSON: spool path, morph steps, rendered message...), so a retry sends the
    # same bytes. Routing inserts rows and marks the journal entry routed in one transaction.
    # Times are epoch seconds (REAL) because the dispatcher compares them on every lease.
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        kind TEXT NOT NULL,
        source_table TEXT NOT NULL,
        source_id INTEGER NOT NULL,
        route TEXT NOT NULL,
        payload TEXT NOT NULL,
        study_instance_uid TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        done_at REAL
    );
    CREATE INDEX outbox_ready ON outbox (destination, state, next_attempt_at);
    CREATE INDEX outbox_study ON outbox (destination, study_instance_uid, id)
        WHERE state IN ('pending', 'leased');
    CREATE INDEX outbox_dead ON outbox (state, destination, id) WHERE state = 'dead';
    ALTER TABLE hl7_messages ADD COLUMN routed_at TEXT
    """,
    # 4: routing. ``routing_outcome`` says what routing made of a journal entry
    # (routed, grouped, discarded, unmatched): unmatched objects stay visible and listable.
    # Series/study triggers wait in ``routing_groups`` (one open group per route and series or
    # study; its frozen decision as JSON) with their members, so the quiet-period timers are
    # rebuilt from here at start. SQL in sqlite/routing.py.
    """
    ALTER TABLE instances ADD COLUMN routing_outcome TEXT;
    ALTER TABLE hl7_messages ADD COLUMN routing_outcome TEXT;
    CREATE INDEX hl7_messages_unrouted ON hl7_messages (id) WHERE routed_at IS NULL;
    CREATE INDEX instances_unmatched ON instances (id) WHERE routing_outcome = 'unmatched';
    CREATE TABLE routing_groups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        route TEXT NOT NULL,
        level TEXT NOT NULL,
        group_key TEXT NOT NULL,
        study_instance_uid TEXT,
        state TEXT NOT NULL DEFAULT 'open',
        decision TEXT NOT NULL,
        quiet_seconds REAL NOT NULL,
        max_wait_seconds REAL NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        fired_at REAL,
        fire_reason TEXT
    );
    CREATE UNIQUE INDEX routing_groups_open ON routing_groups (route, level, group_key)
        WHERE state = 'open';
    CREATE INDEX routing_groups_study ON routing_groups (study_instance_uid)
        WHERE state = 'open';
    CREATE TABLE routing_group_members (
        group_id INTEGER NOT NULL REFERENCES routing_groups (id),
        instance_id INTEGER NOT NULL REFERENCES instances (id),
        PRIMARY KEY (group_id, instance_id)
    ) WITHOUT ROWID
    """,
    # 5: Modality Performed Procedure Steps (SQL in sqlite/mpps.py). One row per step
    # with its full attributes as DICOM JSON (as received, then as updated) and its worklist
    # link; ``procedure_step_events`` is the journal of Started/Completed/Discontinued facts
    # (routed like instances: ``routed_at``/``routing_outcome``); ``procedure_step_instances``
    # keeps the instances a COMPLETED step lists, the evidence that its study is complete.
    """
    CREATE TABLE procedure_steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL DEFAULT '',
        accession_number TEXT NOT NULL DEFAULT '',
        patient_id TEXT NOT NULL DEFAULT '',
        performed_procedure_step_id TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        calling_ae TEXT NOT NULL DEFAULT '',
        worklist_item_ids TEXT NOT NULL DEFAULT '[]',
        unscheduled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        complete_at TEXT,
        dataset TEXT NOT NULL
    );
    CREATE INDEX procedure_steps_study ON procedure_steps (study_instance_uid);
    CREATE INDEX procedure_steps_awaiting ON procedure_steps (id)
        WHERE status = 'COMPLETED' AND complete_at IS NULL;
    CREATE TABLE procedure_step_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        step_id INTEGER NOT NULL REFERENCES procedure_steps (id),
        operation TEXT NOT NULL,
        status TEXT NOT NULL,
        received TEXT NOT NULL,
        received_at TEXT NOT NULL,
        routed_at TEXT,
        routing_outcome TEXT
    );
    CREATE INDEX procedure_step_events_unrouted ON procedure_step_events (id)
        WHERE routed_at IS NULL;
    CREATE TABLE procedure_step_instances (
        step_id INTEGER NOT NULL REFERENCES procedure_steps (id),
        sop_instance_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL DEFAULT '',
        series_instance_uid TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (step_id, sop_instance_uid)
    ) WITHOUT ROWID;
    CREATE INDEX procedure_step_instances_uid ON procedure_step_instances (sop_instance_uid)
    """,
    # 6: spool retention (SQL in sqlite/retention.py): instances by age, and the outbox rows
    # and group memberships that still need an instance's file.
    """
    CREATE INDEX instances_received ON instances (received_at);
    CREATE INDEX outbox_source ON outbox (source_table, source_id);
    CREATE INDEX routing_group_members_instance ON routing_group_members (instance_id)
    """,
    # 7: rows committed while their file's fsync ran beside the commit; 0 until it is marked
    # (SQL in sqlite/journal.py). Every earlier row had its file fsync'd before its commit.
    """
    ALTER TABLE instances ADD COLUMN durable INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX instances_not_durable ON instances (id) WHERE durable = 0
    """,
    # 8: journal retention for HL7 messages and MPPS steps (SQL in sqlite/retention.py).
    """
    CREATE INDEX hl7_messages_received ON hl7_messages (received_at);
    CREATE INDEX procedure_steps_updated ON procedure_steps (updated_at);
    CREATE INDEX procedure_step_events_step ON procedure_step_events (step_id)
    """,
    # 9: tracing one order end to end (SQL in sqlite/trace.py): instances and MPPS steps by
    # accession number and by patient, as the worklist already is.
    """
    CREATE INDEX instances_accession ON instances (accession_number);
    CREATE INDEX instances_patient ON instances (patient_id);
    CREATE INDEX procedure_steps_accession ON procedure_steps (accession_number);
    CREATE INDEX procedure_steps_patient ON procedure_steps (patient_id)
    """,
    # 10: the Query/Retrieve index (SQL in sqlite/qr.py): one row per current SOP Instance,
    # gone with its journal row; the last journal row indexed.
    """
    CREATE TABLE qr_instances (
        sop_instance_uid TEXT PRIMARY KEY,
        instance_id INTEGER NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
        patient_id TEXT NOT NULL DEFAULT '',
        patient_name TEXT NOT NULL DEFAULT '',
        patient_birth_date TEXT NOT NULL DEFAULT '',
        patient_sex TEXT NOT NULL DEFAULT '',
        study_instance_uid TEXT NOT NULL DEFAULT '',
        study_date TEXT NOT NULL DEFAULT '',
        study_time TEXT NOT NULL DEFAULT '',
        accession_number TEXT NOT NULL DEFAULT '',
        study_id TEXT NOT NULL DEFAULT '',
        study_description TEXT NOT NULL DEFAULT '',
        referring_physician_name TEXT NOT NULL DEFAULT '',
        series_instance_uid TEXT NOT NULL DEFAULT '',
        series_number TEXT NOT NULL DEFAULT '',
        series_description TEXT NOT NULL DEFAULT '',
        modality TEXT NOT NULL DEFAULT '',
        sop_class_uid TEXT NOT NULL DEFAULT '',
        instance_number TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX qr_instances_instance ON qr_instances (instance_id);
    CREATE INDEX qr_instances_patient ON qr_instances (patient_id);
    CREATE INDEX qr_instances_name ON qr_instances (patient_name COLLATE NOCASE);
    CREATE INDEX qr_instances_study ON qr_instances (study_instance_uid);
    CREATE INDEX qr_instances_date ON qr_instances (study_date);
    CREATE INDEX qr_instances_accession ON qr_instances (accession_number);
    CREATE INDEX qr_instances_series ON qr_instances (series_instance_uid);
    CREATE TABLE qr_index_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        last_instance_id INTEGER NOT NULL
    )
    """,
    # 11: Storage Commitment requests (SQL in sqlite/commitment.py); their reports are
    # outbox rows (source_table 'commitment_requests').
    """
    CREATE TABLE commitment_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        transaction_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        policy TEXT NOT NULL,
        state TEXT NOT NULL,
        refs TEXT NOT NULL,
        received_at TEXT NOT NULL,
        deadline REAL,
        reported_at REAL,
        UNIQUE (calling_ae, transaction_uid)
    );
    CREATE INDEX commitment_requests_waiting ON commitment_requests (id) WHERE state = 'waiting'
    """,
    # 12: on_archive requests radflow relayed to an archive: per destination, the Transaction
    # UID radflow asked with and the archive's answer (SQL in sqlite/commitment.py).
    """
    ALTER TABLE commitment_requests ADD COLUMN archive_asks TEXT NOT NULL DEFAULT '{}'
    """,
    # 13: access control (access.py): console and API users (password hashes, lock-out
    # state), their API tokens (hashes, revocable) and the table of changes made through the
    # admin server and the CLI (who, what, when, from where).
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        label TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    );
    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        user_name TEXT NOT NULL,
        peer_host TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    )
    """,
    # 14: console sessions (access.py), shared by every process on the database: the SHA-256
    # of the session id, never the id; ended with their user, password or lock-out.
    """
    CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        peer_host TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX console_sessions_user ON console_sessions (user_name);
    CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen)
    """,
    # 15: the most recent errors (recent_errors.py), one shared list for every process on the
    # database: repeats of one failure are counted into one row; the newest few hundred kept.
    """
    CREATE TABLE recent_errors (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        reason TEXT NOT NULL,
        peer_host TEXT NOT NULL,
        event TEXT NOT NULL,
        node TEXT NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        count INTEGER NOT NULL
    );
    CREATE INDEX recent_errors_key ON recent_errors (kind, subject, reason);
    CREATE INDEX recent_errors_last_at ON recent_errors (last_at)
    """,
    # 16: what the routes that matched an instance asked of Storage Commitment, recorded in
    # the routing transaction (JSON list of archive destinations, [] on_receipt; NULL: no
    # route said), so any node decides a request the same way after any reload.
    """
    ALTER TABLE instances ADD COLUMN route_commitment TEXT
    """,
    # 17: which process took a Storage Commitment request (its outbox lease prefix): the
    # report waits a moment for that process, which holds the association the modality may
    # keep open for it.
    """
    ALTER TABLE commitment_requests ADD COLUMN via TEXT NOT NULL DEFAULT ''
    """,
)


class _Target:
    """:class:`~engine.durable.migrations.MigrationTarget` on the writer's connection. The
    write lock of BEGIN IMMEDIATE keeps two processes on one file from migrating at once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def current_version(self) -> int:
        self._conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER "
                           "PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)")
        return int(self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                                      ).fetchone()[0])

    def apply(self, version: int, script: str) -> None:
        with transaction(self._conn):
            for statement in script.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            self._conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema up to date; the versions applied."""
    return run_migrations(_Target(conn), MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
                            ).fetchone()[0])
