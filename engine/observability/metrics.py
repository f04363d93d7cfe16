"""Every Prometheus metric radflow exports, declared in this one module.

Other modules import the metric objects from here and only call ``inc``/``observe``/``set``;
they never declare metrics themselves. All metrics live in a private registry so tests can run
several engines in one process without name clashes being fatal.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_open_fds...: the dashboard's per-node panels.
ProcessCollector(registry=REGISTRY)

# --- the node -------------------------------------------------------------------------------
NODE_INFO = Gauge(
    "radflow_node_info",
    "Always 1; labels name this node (engine.node_id) and its radflow version.",
    ["node", "version"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
NODE_ROLE = Gauge(
    "radflow_node_role",
    "1 for each role this node runs (engine.roles).",
    ["node", "role"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
RULES_LOADED = Gauge(
    "radflow_rules_loaded",
    "1 for the route set version a process of this node has in use (0 once replaced); two "
    "versions at 1 on one node, or different versions across nodes, mean drift.",
    ["node", "ruleset"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
STORE_UP = Gauge(
    "radflow_store_up",
    "1 while the database answers (checked every few seconds), 0 while it does not.",
    multiprocess_mode="livemin", registry=REGISTRY,
)
STORE_CLOCK_OFFSET = Gauge(
    "radflow_store_clock_offset_seconds",
    "How far this node's clock is from the database server's (absolute, seconds; read every "
    "minute on PostgreSQL, 0 on SQLite). Outbox leases are judged by the nodes' clocks.",
    multiprocess_mode="livemax", registry=REGISTRY,
)
TLS_CERT_EXPIRY = Gauge(
    "radflow_tls_certificate_expiry_timestamp_seconds",
    "When the first certificate in a configured TLS file expires (Unix time), by setting path.",
    ["setting", "file"],
    multiprocess_mode="livemin", registry=REGISTRY,
)
TLS_CERT_READ_ERRORS = Gauge(
    "radflow_tls_certificate_unreadable",
    "1 for a configured TLS certificate file that cannot be read or parsed.",
    ["setting", "file"],
    multiprocess_mode="livemax", registry=REGISTRY,
)

# --- DICOM ingress --------------------------------------------------------------------------
DIMSE_INSTANCES_RECEIVED = Counter(
    "radflow_dimse_instances_received_total",
    "Instances accepted by C-STORE (success status sent after the durable commit).",
    ["listener"],
    registry=REGISTRY,
)
DIMSE_BYTES_RECEIVED = Counter(
    "radflow_dimse_bytes_received_total",
    "Dataset bytes accepted by C-STORE.",
    ["listener"],
    registry=REGISTRY,
)
DIMSE_DUPLICATES = Counter(
    "radflow_dimse_duplicates_total",
    "C-STOREs of an already known SOP Instance UID, by outcome.",
    ["listener", "outcome"],
    registry=REGISTRY,
)
DIMSE_REJECTIONS = Counter(
    "radflow_dimse_rejections_total",
    "Refused connections, associations, PDUs and DIMSE requests, and failed C-STOREs, by reason.",
    ["listener", "reason"],
    registry=REGISTRY,
)
DIMSE_OPEN_ASSOCIATIONS = Gauge(
    "radflow_dimse_open_associations",
    "Associations currently established.",
    ["listener"],
    multiprocess_mode="livesum", registry=REGISTRY,
)
DIMSE_STORE_SECONDS = Histogram(
    "radflow_dimse_store_seconds",
    "Time from a C-STORE request reaching the handler to its answer (spool write + commit).",
    ["listener"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
DIMSE_ECHOES = Counter(
    "radflow_dimse_echoes_total", "C-ECHO requests answered.", ["listener"], registry=REGISTRY
)

# --- durable layer --------------------------------------------------------------------------
JOURNAL_COMMIT_BATCH = Histogram(
    "radflow_journal_commit_batch_size",
    "Entries committed together by the group-commit writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
JOURNAL_COMMIT_SECONDS = Histogram(
    "radflow_journal_commit_seconds",
    "Time of one group commit (directory fsyncs + transaction).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY,
)
SPOOL_FREE_BYTES = Gauge(
    "radflow_spool_free_bytes", "Free bytes on the spool's file system.",
    multiprocess_mode="livemin", registry=REGISTRY
)
SPOOL_PURGED_INSTANCES = Counter(
    "radflow_spool_purged_instances_total",
    "Instances removed from the spool and journal by retention (storage.retention_days).",
    registry=REGISTRY,
)
SPOOL_PURGED_BYTES = Counter(
    "radflow_spool_purged_bytes_total", "Bytes of spool files removed by retention.",
    registry=REGISTRY,
)
JOURNAL_PURGED = Counter(
    "radflow_journal_purged_total",
    "HL7 messages and MPPS steps removed from the journal by retention "
    "(storage.journal_retention_days).",
    ["journal"],
    registry=REGISTRY,
)
SPOOL_LOW_SPACE = Gauge(
    "radflow_spool_low_space", "1 while the spool is below its free-space threshold.",
    multiprocess_mode="livemax", registry=REGISTRY,
)


# --- HL7 ingress ----------------------------------------------------------------------------
HL7_MESSAGES = Counter(
    "radflow_hl7_messages_total",
    "HL7 messages answered, by message type (e.g. ORM^O01) and ACK code.",
    ["message_type", "ack_code"],
    registry=REGISTRY,
)
HL7_MESSAGE_SECONDS = Histogram(
    "radflow_hl7_message_seconds",
    "Time from a complete MLLP frame to its ACK being ready (parse + durable commit).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0),
    registry=REGISTRY,
)
HL7_COMMIT_BATCH = Histogram(
    "radflow_hl7_commit_batch_size",
    "HL7 messages committed together by the group-commit writer.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
    registry=REGISTRY,
)
HL7_COMMIT_SECONDS = Histogram(
    "radflow_hl7_commit_seconds",
    "Time of one HL7 group commit (journal rows and worklist changes).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
    registry=REGISTRY,
)
MLLP_CONNECTIONS = Gauge(
    "radflow_mllp_open_connections", "Open MLLP connections.", ["listener"],
    multiprocess_mode="livesum", registry=REGISTRY
)
MLLP_CONNECTION_ERRORS = Counter(
    "radflow_mllp_connection_errors_total",
    "MLLP connections closed on an error, by reason (framing, too large, idle, refused).",
    ["listener", "reason"],
    registry=REGISTRY,
)
# --- worklist -------------------------------------------------------------------------------
WORKLIST_ITEMS = Gauge(
    "radflow_worklist_items",
    "Worklist items by status (refreshed periodically and after API changes).",
    ["status"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
WORKLIST_PURGED = Counter(
    "radflow_worklist_purged_total",
    "Final-state worklist items deleted by retention.",
    registry=REGISTRY,
)
MWL_FIND_SECONDS = Histogram(
    "radflow_mwl_find_seconds",
    "Modality Worklist C-FIND: time from the request to the last answer handed to pynetdicom.",
    ["listener"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
MWL_FIND_MATCHES = Counter(
    "radflow_mwl_find_matches_total",
    "Worklist items returned by C-FIND (Pending answers).",
    ["listener"],
    registry=REGISTRY,
)
MWL_FIND_REQUESTS = Counter(
    "radflow_mwl_find_requests_total",
    "Modality Worklist C-FIND requests, by final status (success, cancel, failure reason).",
    ["listener", "outcome"],
    registry=REGISTRY,
)
QR_REQUESTS = Counter(
    "radflow_qr_requests_total",
    "Query/Retrieve requests (C-FIND, C-MOVE, C-GET) over the spool, by final outcome.",
    ["listener", "operation", "outcome"],
    registry=REGISTRY,
)
QR_SECONDS = Histogram(
    "radflow_qr_seconds",
    "Query/Retrieve: time from the request to its final answer.",
    ["listener", "operation"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0),
    registry=REGISTRY,
)
QR_INSTANCES_SENT = Counter(
    "radflow_qr_instances_sent_total",
    "Instances handed to C-STORE sub-operations of C-MOVE and C-GET.",
    ["listener", "operation"],
    registry=REGISTRY,
)

# --- routing (rules, morphs, outbox) --------------------------------------------------------
RULES_ROUTES = Gauge(
    "radflow_rules_routes", "Routes in the ruleset in use.",
    multiprocess_mode="livemax", registry=REGISTRY
)
RULES_RELOADS = Counter(
    "radflow_rules_reloads_total",
    "Ruleset reloads (SIGHUP or a change in the routes folder), by outcome (ok, failed).",
    ["outcome"],
    registry=REGISTRY,
)
RULES_LAST_RELOAD_OK = Gauge(
    "radflow_rules_last_reload_ok",
    "0 while the last reload failed (the previous ruleset stays in use), else 1.",
    multiprocess_mode="livemin", registry=REGISTRY,
)
ROUTING_ENTRIES = Counter(
    "radflow_routing_entries_total",
    "Journal entries routed, by source (instances, hl7_messages) and outcome (routed, grouped, "
    "discarded, unmatched).",
    ["source", "outcome"],
    registry=REGISTRY,
)
ROUTING_ROUTE_MATCHES = Counter(
    "radflow_routing_route_matches_total", "Events a route matched.", ["route"],
    registry=REGISTRY,
)
ROUTING_OUTBOX_ROWS = Counter(
    "radflow_routing_outbox_rows_total", "Outbox rows written by routing, by destination.",
    ["destination"],
    registry=REGISTRY,
)
ROUTING_SECONDS = Histogram(
    "radflow_routing_seconds",
    "Time to route one batch of journal entries (read, evaluate, one transaction).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
ROUTING_BATCH = Histogram(
    "radflow_routing_batch_size", "Journal entries routed in one transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
ROUTING_GROUPS_OPEN = Gauge(
    "radflow_routing_groups_open", "Series/study groups waiting for their trigger.",
    multiprocess_mode="livemax", registry=REGISTRY,
)
ROUTING_GROUPS_FIRED = Counter(
    "radflow_routing_groups_fired_total",
    "Series/study groups fired, by level and reason (quiet, max_wait, study_complete).",
    ["level", "reason"],
    registry=REGISTRY,
)
ROUTING_QUEUE_DROPPED = Counter(
    "radflow_routing_queue_dropped_total",
    "Events the router's queue could not take (routed later from the journal by the sweep).",
    registry=REGISTRY,
)
ROUTING_FAILURES = Counter(
    "radflow_routing_failures_total",
    "Journal entries that could not be routed this time (retried by the sweep), by reason.",
    ["reason"],
    registry=REGISTRY,
)

# --- delivery (D3 outbox, dispatcher, senders) ----------------------------------------------
OUTBOX_ROWS = Gauge(
    "radflow_outbox_rows",
    "Outbox rows per destination and state (pending, leased, dead), refreshed periodically.",
    ["destination", "state"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "radflow_outbox_oldest_age_seconds",
    "Age of the oldest undelivered (pending or leased) row per destination; 0 when empty.",
    ["destination"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "radflow_delivery_attempts_total",
    "Delivery attempts (rows handed to a sender) per destination.",
    ["destination"],
    registry=REGISTRY,
)
DELIVERY_OUTCOMES = Counter(
    "radflow_delivery_outcomes_total",
    "Attempt outcomes per destination: delivered, retry, dead_letter, released.",
    ["destination", "outcome"],
    registry=REGISTRY,
)
INTEGRITY_FAILURES = Counter(
    "radflow_integrity_failures_total",
    "Spooled objects whose bytes no longer match the size and SHA-256 recorded at intake, "
    "found on the way out (dead-lettered integrity_failed): alert on any increase, the "
    "spool's storage is damaging data.",
    ["destination"],
    registry=REGISTRY,
)
DELIVERY_SEND_SECONDS = Histogram(
    "radflow_delivery_send_seconds",
    "Time one row took to send (for batched protocols: its batch's time), per destination.",
    ["destination"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
             10.0, 30.0),
    registry=REGISTRY,
)
DELIVERY_CIRCUIT_STATE = Gauge(
    "radflow_delivery_circuit_state",
    "Circuit breaker per destination: 0 closed, 1 open (resting), 2 half-open (probing).",
    ["destination"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
EGRESS_DIMSE_ASSOCIATIONS = Counter(
    "radflow_egress_dimse_associations_total",
    "Outgoing associations requested, by outcome (established, rejected, failed).",
    ["destination", "outcome"],
    registry=REGISTRY,
)
EGRESS_DIMSE_RECONNECTS = Counter(
    "radflow_egress_dimse_reconnects_total",
    "Associations lost in the middle of a batch and re-opened to resend, by reason.",
    ["destination", "reason"],
    registry=REGISTRY,
)
EGRESS_TRANSCODED = Counter(
    "radflow_egress_transcoded_total",
    "Instances re-encoded because the destination accepts none of their stored syntax.",
    ["destination"],
    registry=REGISTRY,
)

# --- procedure steps (MPPS) -----------------------------------------------------------------
MPPS_REQUESTS = Counter(
    "radflow_mpps_requests_total",
    "MPPS N-CREATE / N-SET requests, by operation (create, set) and outcome (the resulting "
    "state, or the refusal reason).",
    ["operation", "outcome"],
    registry=REGISTRY,
)
MPPS_SECONDS = Histogram(
    "radflow_mpps_seconds",
    "MPPS N-CREATE / N-SET handling time, request to status (commit included).",
    ["operation"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
MPPS_STUDIES_COMPLETE = Counter(
    "radflow_mpps_studies_complete_total",
    "Studies marked complete because every instance a COMPLETED MPPS lists has arrived.",
    registry=REGISTRY,
)
STATUS_MESSAGES_WITHHELD = Counter(
    "radflow_status_messages_withheld_total",
    "Order status messages a route would send but radflow held back (reason no_order: the "
    "procedure step is linked to no order yet; sent once an order for it arrives).",
    ["reason"],
    registry=REGISTRY,
)
PROCEDURE_STEPS_LINKED = Counter(
    "radflow_procedure_steps_linked_total",
    "Unscheduled procedure steps linked to an order that arrived after they started.",
    registry=REGISTRY,
)

# --- audit trail (IHE ATNA); the audit queue itself is the outbox destination "audit" --------
AUDIT_RECORDS = Counter(
    "radflow_audit_records_total",
    "Audit messages queued for the audit repository and file, by event (DICOM audit event name).",
    ["event"],
    registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "radflow_audit_failures_total",
    "Audit messages that could not be queued (store unavailable), by event; each is logged.",
    ["event"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The Prometheus text exposition of every metric; with several workers on the machine
    (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor), of all of them together."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return generate_latest(REGISTRY)
    # A fresh registry per scrape, as prometheus_client's multiprocess guide does: the
    # collector reads every worker's files (a dead worker's counters stay in the totals).
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
