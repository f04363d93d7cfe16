"""Every Prometheus metric radflow exports, declared in this one module.

Other modules import the metric objects from here and only call ``inc``/``observe``/``set``;
they never declare metrics themselves. All metrics live in a private registry so tests can run
several engines in one process without name clashes being fatal.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

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
    "Refused associations and failed C-STOREs, by reason.",
    ["listener", "reason"],
    registry=REGISTRY,
)
DIMSE_OPEN_ASSOCIATIONS = Gauge(
    "radflow_dimse_open_associations",
    "Associations currently established.",
    ["listener"],
    registry=REGISTRY,
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
    "radflow_spool_free_bytes", "Free bytes on the spool's file system.", registry=REGISTRY
)
SPOOL_LOW_SPACE = Gauge(
    "radflow_spool_low_space", "1 while the spool is below its free-space threshold.",
    registry=REGISTRY,
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
    "radflow_mllp_open_connections", "Open MLLP connections.", ["listener"], registry=REGISTRY
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
    registry=REGISTRY,
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


def render() -> bytes:
    """The Prometheus text exposition of every metric."""
    return generate_latest(REGISTRY)
