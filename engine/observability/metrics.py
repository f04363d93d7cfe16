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


def render() -> bytes:
    """The Prometheus text exposition of every metric."""
    return generate_latest(REGISTRY)
