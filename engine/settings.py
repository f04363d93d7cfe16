"""Site settings: the YAML file, its environment overrides, and their validation.

Owns the pydantic models of ``config/radflow.yaml`` and :func:`load_settings`, which reads the
file safely, applies ``RADFLOW_<SECTION>__<KEY>`` overrides, validates everything at once and
reports every error with its file, line and key path (:class:`SettingsError`). A relative path
written in the file is made absolute against the file's folder, so a site file means the same
from any working directory; defaults and environment values stay relative to the working
directory (a service's ``WorkingDirectory``, or the shell a path was typed in). It must not open
sockets, files other than the config file, or stores: the engine does that from the validated
model.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.dicom.vr import is_valid_ae_title, is_valid_uid
from engine.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config/radflow.yaml")
ENV_PREFIX = "RADFLOW_"
_M = TypeVar("_M", bound="BaseModel")



def _check_ae_title(value: str) -> str:
    if not is_valid_ae_title(value):
        raise ValueError("an AE title is 1-16 printable characters, no backslash, not all spaces")
    return value.strip()


def _check_uid(value: str) -> str:
    if not is_valid_uid(value):
        raise ValueError(f"{value!r} is not a valid DICOM UID")
    return value


def _check_host_pattern(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or network (CIDR)") from exc
    return value


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Uid = Annotated[str, AfterValidator(_check_uid)]
HostPattern = Annotated[str, AfterValidator(_check_host_pattern)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The common transfer syntaxes DESIGN.md promises, most preferred first.
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)


class CallingPeer(_Strict):
    """One allowed calling AE, optionally pinned to an address or network and, on a TLS
    listener that asks for client certificates, to the name its certificate carries."""

    ae_title: AETitle
    host: HostPattern | None = None
    #: a name (subject common name, or a DNS or IP subject alternative name) the peer's TLS
    #: client certificate must carry: binds the AE title to a device's certificate
    certificate: str | None = Field(default=None, min_length=1)


class UserIdentity(_Strict):
    """A user identity (PS3.7 D.3.3.7) an SCU may present: username, or username and passcode."""

    username: str = Field(min_length=1)
    passcode: SecretStr | None = None


class TlsSettings(_Strict):
    """TLS for a listener: a certificate chain and key, and optionally client verification."""

    cert_file: Path
    key_file: Path
    #: when set, clients must present a certificate signed by one of these CAs
    client_ca_file: Path | None = None


class DicomListener(_Strict):
    """One DICOM listener: an AE title on a port, with its acceptance policy and limits."""

    name: str = "main"
    ae_title: AETitle = "RADFLOW"
    host: str = "0.0.0.0"
    port: Port = 11112
    #: the calling AEs that may associate; empty: nobody, unless ``accept_any_calling``
    allowed_calling: list[CallingPeer] = Field(default_factory=list)
    #: accept any calling AE title (the called AE title is still checked): an explicit opening,
    #: never the result of an empty ``allowed_calling``
    accept_any_calling: bool = False
    #: empty: identities are not asked for; otherwise an association must present one of these
    user_identities: list[UserIdentity] = Field(default_factory=list)
    #: negotiated associations open at once; one more is refused (A-ASSOCIATE-RJ, local limit)
    max_associations: int = Field(default=16, ge=1, le=1000)
    #: connections not yet through association negotiation (each is closed when acse_timeout
    #: runs out); one more is closed at once. Separate from max_associations so silent or
    #: half-open connections can never take the places of modalities that negotiate.
    max_pending_connections: int = Field(default=64, ge=1, le=10_000)
    max_pdu_size: int = Field(default=262_144, ge=4096, le=16_777_216)
    #: seconds a new connection has to finish its TLS handshake and send its whole
    #: A-ASSOCIATE-RQ (the ARTIM timer); then it is closed
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    #: seconds an association may stay silent, and the longest one PDU may take to arrive
    #: once it has begun; then it is aborted
    network_timeout: float = Field(default=120.0, gt=0)
    transfer_syntaxes: list[Uid] = Field(default_factory=lambda: list(DEFAULT_TRANSFER_SYNTAXES))
    #: private or very new storage SOP classes to accept besides pynetdicom's list
    extra_storage_sop_classes: list[Uid] = Field(default_factory=list)
    #: DICOM over TLS (PS3.15 B.1; port 2762 by convention): this listener then speaks TLS only
    tls: TlsSettings | None = None

    @model_validator(mode="after")
    def _allow_list_or_any(self) -> DicomListener:
        if self.accept_any_calling and self.allowed_calling:
            raise ValueError("accept_any_calling: true makes allowed_calling meaningless: "
                             "set one or the other")
        return self

    @model_validator(mode="after")
    def _certificates_need_client_tls(self) -> DicomListener:
        if any(p.certificate for p in self.allowed_calling) and (
                self.tls is None or self.tls.client_ca_file is None):
            raise ValueError("allowed_calling[].certificate needs tls.client_ca_file: without "
                             "it no client certificate is asked for")
        return self


class DicomSettings(_Strict):
    """DICOM ingress: listeners and intake policy."""

    listeners: list[DicomListener] = Field(default_factory=lambda: [DicomListener()])
    #: what a second instance with a known SOP Instance UID does (an identical resend is always
    #: answered Success and stored once): ``version`` keeps both and routes the new one,
    #: ``ignore`` keeps the first, ``reject`` answers failure 0x0111
    duplicate_policy: Literal["version", "ignore", "reject"] = "version"
    #: how long an association thread waits for the durable commit before answering 0xA700
    store_timeout: float = Field(default=30.0, gt=0)
    #: a C-STORE dataset larger than this is written to a file while it arrives instead of
    #: being held in memory (large multi-frame objects); smaller ones never touch that file
    spill_threshold_mb: int = Field(default=64, ge=1, le=4096)
    #: where those files go while they arrive (any file system; default: the spool's ``tmp/``)
    spill_dir: Path | None = None


class Hl7Listener(_Strict):
    """One MLLP listener for HL7 v2 messages."""

    name: str = "mllp"
    host: str = "0.0.0.0"
    port: Port = 2575
    max_connections: int = Field(default=64, ge=1, le=10_000)
    #: open connections one source address may hold; more are refused, so one sender (or a
    #: scanner) cannot take every slot
    max_connections_per_source: int = Field(default=8, ge=1, le=10_000)
    #: a new connection must deliver its first complete message within this many seconds, or
    #: it is closed (idle sockets must not hold slots for the whole idle timeout)
    first_message_timeout: float = Field(default=10.0, gt=0)
    #: a message larger than this closes the connection (it is never buffered whole)
    max_message_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1024 * 1024)
    #: an established connection silent for this long is closed
    idle_timeout: float = Field(default=300.0, gt=0)
    tls: TlsSettings | None = None


class Hl7Settings(_Strict):
    """HL7 v2 ingress: MLLP listeners and how radflow signs its acknowledgements."""

    listeners: list[Hl7Listener] = Field(default_factory=lambda: [Hl7Listener()])
    #: addresses or networks (CIDR) allowed to connect; empty: nobody, unless
    #: ``accept_any_source`` opens the listeners to every address
    allowed_sources: list[HostPattern] = Field(default_factory=list)
    #: accept HL7 from any address (a lab bench, or a firewall that already filters)
    accept_any_source: bool = False
    #: MSH-3 / MSH-4 of radflow's ACKs
    sending_application: str = "RADFLOW"
    sending_facility: str = "RADFLOW"
    #: charset assumed when MSH-18 is empty (HL7 default is ASCII; many RIS send Latin-1)
    default_charset: str = "8859/1"
    #: how long a message may wait for its durable commit before it is answered AR
    commit_timeout: float = Field(default=30.0, gt=0)


_PG_SCHEMA_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _check_pg_schema(value: str) -> str:
    if not value or value[0].isdigit() or not set(value) <= _PG_SCHEMA_CHARS or len(value) > 63:
        raise ValueError("a schema name is 1-63 lower-case letters, digits or _, not starting "
                         "with a digit")
    return value


class PostgresSettings(_Strict):
    """The PostgreSQL server radflow keeps its state in (``storage.backend: postgresql``).

    The password is never read from this file: it comes from the environment variable named by
    ``password_env`` or from ``password_file`` (libpq's own PGPASSWORD and ~/.pgpass also work).
    """

    #: a libpq connection string or URI ("host=db1 dbname=radflow user=radflow" or
    #: "postgresql://radflow@db1/radflow"), without a password; when set, host, port, database
    #: and user below are not used
    dsn: str = ""
    host: str = "127.0.0.1"
    port: Port = 5432
    database: str = "radflow"
    user: str = "radflow"
    #: name of the environment variable holding the password
    password_env: str = "RADFLOW_POSTGRESQL_PASSWORD"
    #: a file holding the password (first line), readable by radflow only
    password_file: Path | None = None
    #: the schema radflow's tables live in (created when missing)
    db_schema: Annotated[str, AfterValidator(_check_pg_schema)] = Field(
        default="public", alias="schema")
    #: connections for reads and for background work (commits have one of their own)
    pool_size: int = Field(default=8, ge=1, le=200)
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca",
                     "verify-full"] = "prefer"
    #: CA bundle for verify-ca / verify-full
    sslrootcert: Path | None = None
    #: a statement running longer than this is cancelled (seconds; 0: no limit)
    statement_timeout: float = Field(default=30.0, ge=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    #: prepared statements (faster); turn off behind PgBouncer in transaction mode (older
    #: than 1.22), which cannot keep them
    prepared_statements: bool = True
    #: radflow refuses a server whose sessions run with ``synchronous_commit = off`` (a commit
    #: could be lost after radflow answered Success); true accepts that risk
    allow_async_commit: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _dsn_without_password(self) -> PostgresSettings:
        if self.dsn:
            from psycopg.conninfo import conninfo_to_dict

            try:
                parts = conninfo_to_dict(self.dsn)
            except Exception as exc:
                raise ValueError(f"dsn is not a valid libpq connection string: {exc}") from exc
            if parts.get("password"):
                raise ValueError("dsn must not carry a password: use password_env or "
                                 "password_file")
        return self


class StorageSettings(_Strict):
    """Where durable state lives: the embedded default is SQLite plus a local spool folder."""

    #: sqlite (one file, no server) or postgresql (shared by several radflow nodes)
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    sqlite_path: Path = Path("var/radflow.db")
    postgresql: PostgresSettings = Field(default_factory=PostgresSettings)
    spool_dir: Path = Path("var/spool")
    #: below this much free space on the spool's disk intake answers Out of Resources
    min_free_mb: int = Field(default=1024, ge=0)
    #: spool files newer than this with no journal row are crash leftovers, removed at start
    orphan_window_hours: float = Field(default=48.0, ge=0)
    #: instances older than this leave the spool and journal once routed and delivered
    #: (dead letters keep theirs); 0 keeps everything
    retention_days: float = Field(default=0.0, ge=0)
    #: HL7 messages and finished MPPS steps older than this leave the journal once routed and
    #: delivered (dead letters keep theirs); 0 keeps everything
    journal_retention_days: float = Field(default=0.0, ge=0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine; a wildcard (``0.0.0.0``, ``::``) or another name is not."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpSettings(_Strict):
    """The admin HTTP server (health, metrics, JSON API, the operator console)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    #: legacy shared token: ``Authorization: Bearer <token>`` acts as an admin ("api-token")
    token: SecretStr | None = None
    #: HTTPS: PEM certificate chain and private key (re-read on SIGHUP)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: the console beyond loopback over plain HTTP (passwords and cookies in clear): only
    #: when the site says so here
    console_over_plain_http: bool = False
    #: a console session ends after this long without a request
    session_idle_minutes: float = Field(default=15.0, gt=0)
    #: this many wrong passwords in a row lock the user out for ``lockout_minutes``
    max_failed_logins: int = Field(default=5, ge=1)
    lockout_minutes: float = Field(default=15.0, gt=0)

    @property
    def https(self) -> bool:
        return self.tls_cert is not None

    @model_validator(mode="after")
    def _beyond_loopback_needs_a_token(self) -> HttpSettings:
        # The API retries, purges, reloads and deletes: reachable from the network it must
        # not be open to anyone who can connect. With HTTPS, users log in (the engine also
        # refuses to start there while no user exists and no token is set).
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together")
        if self.enabled and not is_loopback(self.host) and not self.https and \
                not (self.token and self.token.get_secret_value().strip()):
            raise ValueError(f"the admin API listens on {self.host!r}, beyond loopback, without "
                             "a token: set http.token (or RADFLOW_HTTP__TOKEN), serve HTTPS "
                             "with users (http.tls_cert, http.tls_key, radflow users add), or "
                             "listen on 127.0.0.1")
        return self


class WorklistSettings(_Strict):
    """The Modality Worklist: HL7 mapping, C-FIND behaviour and retention."""

    #: the HL7 → worklist mapping (YAML), validated at start and by check-config
    mapping_file: Path = Path("routes/worklist/hl7-mwl.yaml")
    #: items in a final state (completed, discontinued, cancelled) are deleted this many days
    #: after their last change; 0 keeps them forever
    retention_days: float = Field(default=30.0, ge=0)
    #: PN matching in C-FIND ignores case ("mueller*" finds "MUELLER^HANS"); the standard's
    #: default is case-sensitive. (HL7 without MSH-18 is read as ``hl7.default_charset``.)
    pn_case_insensitive: bool = True
    #: site override of the mapping's station_ae_by_modality table (modality → AE title)
    station_ae_by_modality: dict[str, AETitle] = Field(default_factory=dict)
    #: a C-FIND matching more items than this is refused (Out of Resources): narrow the query
    find_limit: int = Field(default=10_000, ge=1, le=1_000_000)
    #: how long an association thread waits for the store to answer a C-FIND
    find_timeout: float = Field(default=10.0, gt=0)


class MoveDestination(_Strict):
    """A node radflow may send to when asked by C-MOVE (besides the ``dimse`` destinations)."""

    ae_title: AETitle
    host: str
    port: Port


class QueryRetrieveSettings(_Strict):
    """Query/Retrieve SCP (C-FIND, C-MOVE, C-GET) over the instances still in the spool."""

    enabled: bool = True
    #: Move Destinations by AE title; every ``dimse`` destination is one too (by its AE title)
    move_destinations: list[MoveDestination] = Field(default_factory=list)
    #: a C-FIND with more matches is refused (Out of Resources): narrow the query
    find_limit: int = Field(default=10_000, ge=1, le=1_000_000)
    #: how long one index lookup may take before the request fails (seconds)
    timeout: float = Field(default=30.0, gt=0)

    def destinations(self, configured: Mapping[str, object]) -> dict[str, tuple[str, int]]:
        """Move Destination AE title -> (host, port)."""
        out: dict[str, tuple[str, int]] = {}
        for dest in configured.values():
            if isinstance(dest, DimseDestination):
                out.setdefault(dest.ae_title, (dest.host, dest.port))
        for move in self.move_destinations:
            out[move.ae_title] = (move.host, move.port)
        return out


class RetryPolicy(_Strict):
    """How the dispatcher retries one destination (D3). Defaults keep a queue for days."""

    #: first retry delay; doubles per attempt up to ``max_delay`` (with ``jitter``)
    initial_delay: float = Field(default=5.0, gt=0)
    max_delay: float = Field(default=600.0, gt=0)
    #: each delay is scaled by a random factor in [1 - jitter, 1] (never above ``max_delay``)
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: a row is dead-lettered after this many attempts, or once it is this old (hours)
    max_attempts: int = Field(default=1000, ge=1)
    max_age_hours: float = Field(default=72.0, gt=0)
    #: after this many consecutive transient failures the destination rests for ``cooldown``
    #: (doubling while its probes keep failing, up to ``max_delay``)
    circuit_failures: int = Field(default=5, ge=1)
    circuit_cooldown: float = Field(default=30.0, gt=0)


class ClientTlsSettings(_Strict):
    """TLS for a connection radflow opens (DICOM TLS, MLLP over TLS)."""

    #: CA bundle that signs the peer's certificate; empty: the system's CAs
    ca_file: Path | None = None
    #: radflow's own certificate and key, for peers that ask for a client certificate
    cert_file: Path | None = None
    key_file: Path | None = None
    #: check the peer's certificate and host name (turn off only on a lab bench)
    verify: bool = True
    #: the name to check the certificate against, when it differs from ``host``
    server_hostname: str | None = None


class _Destination(_Strict):
    #: parallel sends to this destination
    concurrency: int = Field(default=2, ge=1, le=64)
    #: per-destination override of ``delivery.retry``
    retry: RetryPolicy | None = None
    #: deliver one study's rows in order (a row waits for the earlier rows of its study)
    per_study_order: bool = False


class DimseDestination(_Destination):
    """A C-STORE SCP (a PACS, an AI node)."""

    type: Literal["dimse"]
    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle = "RADFLOW"
    #: preferred transfer syntaxes after the stored one; a destination accepting none of the
    #: stored syntax gets the object transcoded to the first one it accepts
    transfer_syntaxes: list[Uid] = Field(
        default_factory=lambda: ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    max_pdu_size: int = Field(default=262_144, ge=4096, le=16_777_216)
    #: an idle association is released after this many seconds
    idle_close: float = Field(default=5.0, ge=0)
    #: seconds to wait for the association, and for each C-STORE response
    timeout: float = Field(default=60.0, gt=0)
    #: rows one association sends per lease (a batch reuses the open association)
    batch_size: int = Field(default=64, ge=1, le=1000)
    tls: ClientTlsSettings | None = None
    #: as an ``on_archive`` commitment destination: ask this archive for Storage Commitment
    #: after delivery and relay its answer (otherwise its C-STORE Success confirms)
    storage_commitment: bool = False


class HttpAuth(_Strict):
    type: Literal["bearer", "basic"]
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None


class DicomwebDestination(_Destination):
    """A STOW-RS endpoint (``.../studies``)."""

    type: Literal["dicomweb"]
    url: str = Field(pattern=r"^https?://")
    auth: HttpAuth | None = None
    verify_tls: bool = True
    #: CA bundle that signs the server's certificate (a hospital's own CA); empty: the system's
    ca_file: Path | None = None
    batch_max_count: int = Field(default=50, ge=1)
    batch_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    timeout: float = Field(default=120.0, gt=0)


class Hl7Destination(_Destination):
    """An MLLP receiver (RIS, EHR interface engine)."""

    type: Literal["hl7"]
    #: one connection by default: HL7 receivers expect a patient's messages in order
    concurrency: int = Field(default=1, ge=1, le=64)
    host: str
    port: Port
    ack_timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)
    #: what an AE or AR answer means for the row
    on_application_error: Literal["dead_letter", "retry"] = "dead_letter"
    on_application_reject: Literal["dead_letter", "retry"] = "retry"
    #: an idle connection is closed after this many seconds
    idle_close: float = Field(default=30.0, ge=0)
    max_ack_bytes: int = Field(default=1024 * 1024, ge=1024)
    tls: ClientTlsSettings | None = None
    #: character set (HL7 table 0211 name, e.g. ``UNICODE UTF-8``) of the messages radflow
    #: writes for this receiver (status updates); empty: the charset of the order answered.
    #: Forwarded messages always keep their own bytes.
    charset: str = ""
    #: MSH-5 / MSH-6 of the messages radflow writes; empty: the answered order's MSH-3 / MSH-4
    receiving_application: str = ""
    receiving_facility: str = ""


class FhirDestination(_Destination):
    """A FHIR R4 REST endpoint (ImagingStudy, ServiceRequest/Task)."""

    type: Literal["fhir"]
    base_url: str = Field(pattern=r"^https?://")
    auth: HttpAuth | None = None
    verify_tls: bool = True
    #: CA bundle that signs the server's certificate (a hospital's own CA); empty: the system's
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0)


class MppsDestination(_Destination):
    """Another MPPS SCP that gets radflow's MPPS N-CREATE / N-SET forwarded."""

    type: Literal["mpps"]
    #: one association by default: a step's N-CREATE must reach the peer before its N-SETs
    concurrency: int = Field(default=1, ge=1, le=64)
    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle = "RADFLOW"
    timeout: float = Field(default=30.0, gt=0)
    tls: ClientTlsSettings | None = None


Destination = Annotated[
    DimseDestination | DicomwebDestination | Hl7Destination | FhirDestination | MppsDestination,
    Field(discriminator="type"),
]


class AuditRepository(_Destination):
    """The audit record repository: a syslog receiver (RFC 5424) over TLS (RFC 5425) or UDP
    (RFC 5426). Its queue is the outbox destination ``audit``."""

    type: Literal["syslog"] = "syslog"
    #: one connection: the repository gets the records in the order they happened
    concurrency: int = Field(default=1, ge=1, le=8)
    host: str
    #: 6514 is syslog over TLS's registered port; 514 is syslog over UDP's
    port: Port = 6514
    transport: Literal["tls", "udp"] = "tls"
    #: the repository's CA, and radflow's client certificate when the repository asks for one
    #: (IHE ATNA's secure node authentication is mutual TLS)
    tls: ClientTlsSettings | None = None
    #: RFC 5424 APP-NAME
    app_name: str = Field(default="radflow", min_length=1, max_length=48)
    #: seconds to connect and to hand a batch to the connection
    timeout: float = Field(default=10.0, gt=0)
    #: a UDP datagram carries one message; larger messages are refused (dead letters) rather
    #: than truncated by the network
    max_udp_bytes: int = Field(default=65_000, ge=480, le=65_507)
    #: an idle TLS connection is closed after this many seconds
    idle_close: float = Field(default=30.0, ge=0)
    #: an idle worker looks for records this often; the audit trail wakes it when it queues
    #: records, so this only paces retries and other nodes' records (and idle store reads)
    idle_poll: float = Field(default=5.0, gt=0, le=60)


class AuditFile(_Destination):
    """The local audit file: one RFC 5424 line per record, fsync'd. Its queue is the outbox
    destination ``audit-file``."""

    type: Literal["audit_file"] = "audit_file"
    concurrency: int = Field(default=1, ge=1, le=1)
    path: Path
    idle_poll: float = Field(default=5.0, gt=0, le=60)


class AuditSettings(_Strict):
    """The IHE ATNA audit trail: DICOM audit messages to a syslog repository and/or a file."""

    #: the audit record repository; none: no records are sent over the network
    repository: AuditRepository | None = None
    #: a local file that gets every record too (append-only, one line per record)
    file: Path | None = None
    #: AuditEnterpriseSiteID: the hospital or site the records come from
    enterprise_site_id: str = Field(default="", max_length=64)
    #: AuditSourceID; default: ``site.name``
    source_id: str | None = Field(default=None, min_length=1, max_length=64)
    #: destinations whose deliveries are audited as Export (data leaving the archive's care:
    #: AI nodes, research or cloud endpoints) instead of DICOM Instances Transferred; unset:
    #: every ``dicomweb`` destination
    export_destinations: list[str] | None = None
    #: records are written to the database in batches at most this far apart (seconds)
    flush_seconds: float = Field(default=1.0, gt=0, le=60)
    #: a peer's instances of one study make one record once none came for this long (seconds)
    study_quiet_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: /readyz's audit check says the repository looks down once a record has waited longer
    #: than this (minutes) for the repository or file
    max_queue_age_minutes: float = Field(default=60.0, gt=0)
    #: ``report``: that check stays ok (intake goes on; the alert and the detail tell);
    #: ``fail``: radflow reports not ready (for sites whose policy is no audit, no work)
    readiness: Literal["report", "fail"] = "report"
    #: records held in memory between flushes while the database cannot take them
    max_buffered: int = Field(default=100_000, ge=100)

    @property
    def enabled(self) -> bool:
        return self.repository is not None or self.file is not None

    def destinations(self) -> dict[str, AuditRepository | AuditFile]:
        """The outbox destinations that carry the audit trail."""
        out: dict[str, AuditRepository | AuditFile] = {}
        if self.repository is not None:
            out[AUDIT_REPOSITORY] = self.repository
        if self.file is not None:
            out[AUDIT_FILE] = AuditFile(path=self.file)
        return out


class CommitmentModality(_Strict):
    """A modality that asks radflow for Storage Commitment: where its reports go when it does
    not keep its association open, and its own policy."""

    ae_title: AETitle
    host: str | None = None
    port: Port | None = None
    #: overrides ``commitment.policy`` for this calling AE
    policy: Literal["on_receipt", "on_archive"] | None = None


class CommitmentReports(_Destination):
    """The outbox destination ``commitment``: N-EVENT-REPORTs to modalities (built from the
    ``commitment`` section; not configured under ``destinations``)."""

    type: Literal["commitment"] = "commitment"
    concurrency: int = Field(default=1, ge=1, le=8)
    calling_ae_title: AETitle = "RADFLOW"
    modalities: list[CommitmentModality] = Field(default_factory=list)
    timeout: float = Field(default=30.0, gt=0)
    worker_wait_seconds: float = Field(default=30.0, ge=0)


class CommitmentSettings(_Strict):
    """Storage Commitment Push Model SCP: modalities ask, radflow reports later."""

    enabled: bool = True
    #: ``on_receipt``: committed once durably in radflow's journal; ``on_archive``: once the
    #: ``archive_destinations`` confirmed every instance
    policy: Literal["on_receipt", "on_archive"] = "on_receipt"
    modalities: list[CommitmentModality] = Field(default_factory=list)
    #: destinations whose delivery confirms an instance for ``on_archive`` (every one named)
    archive_destinations: list[str] = Field(default_factory=list)
    #: an ``on_archive`` request still unconfirmed after this long is reported as failed
    archive_timeout_minutes: float = Field(default=60.0, gt=0)
    #: how often waiting ``on_archive`` requests are checked (seconds)
    archive_check_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: AE title radflow calls a modality with when it opens a new association for a report
    calling_ae_title: AETitle = "RADFLOW"
    timeout: float = Field(default=30.0, gt=0)
    retry: RetryPolicy | None = None
    #: several workers or nodes: how long a new report waits for the process that took its
    #: N-ACTION (it holds the association the modality may keep open) before any other
    #: process sends it on a new association
    worker_wait_seconds: float = Field(default=30.0, ge=0, le=3600)

    def policy_for(self, calling_ae: str, routes_say: bool = False
                   ) -> Literal["on_receipt", "on_archive", "by_route"]:
        """The precedence: the calling AE's own policy, else (``routes_say``: some route has a
        ``commitment:``) what the routes that matched each instance ask for, else the site's
        ``policy``."""
        for modality in self.modalities:
            if modality.ae_title == calling_ae and modality.policy is not None:
                return modality.policy
        return "by_route" if routes_say else self.policy

    def destinations(self) -> dict[str, CommitmentReports]:
        if not self.enabled:
            return {}
        return {COMMITMENT_REPORTS: CommitmentReports(
            calling_ae_title=self.calling_ae_title, modalities=self.modalities,
            timeout=self.timeout, retry=self.retry,
            worker_wait_seconds=self.worker_wait_seconds)}


#: outbox destination of Storage Commitment reports (reserved like the audit ones)
COMMITMENT_REPORTS = "commitment"

#: outbox destination names of the audit trail (reserved: no configured destination may use them)
AUDIT_REPOSITORY = "audit"
AUDIT_FILE = "audit-file"


class DeliverySettings(_Strict):
    """Defaults of the delivery queues (D3)."""

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    #: a leased row whose worker died comes back after this many seconds (rows leased by an
    #: earlier run of this same node come back at start-up)
    lease_seconds: float = Field(default=300.0, gt=0)
    #: how often an idle worker looks for new rows (the router also wakes it directly)
    poll_interval: float = Field(default=0.5, gt=0, le=60)
    #: delivered rows are kept this long as an audit trail, then deleted (0: at once)
    done_retention_hours: float = Field(default=24.0, ge=0)
    #: how often queue depth and oldest age are refreshed for /metrics
    stats_interval: float = Field(default=5.0, gt=0)


class RoutingSettings(_Strict):
    """Routing and morphing: where the route files are and the site secret."""

    #: route files (``*.yaml``, in file-name order) and ``morphs/*.yaml`` profiles
    routes_dir: Path = Path("routes")
    #: key of deterministic UID remapping, HMAC pseudonyms and per-patient date shifts; needed
    #: by routes that use those morphs. Changing it changes every pseudonym and remapped UID.
    secret: SecretStr | None = None
    #: root of remapped UIDs (give your organisation's registered root)
    uid_prefix: str = Field(default="1.2.826.0.1.3680043.8.498.", max_length=40,
                            pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
    #: how often the routes folder is checked for changes (seconds; 0: only on SIGHUP)
    reload_poll_seconds: float = Field(default=2.0, ge=0)
    #: how often unrouted journal entries (dropped bus events) are looked for
    sweep_seconds: float = Field(default=30.0, gt=0)


class LoggingSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``auto``: JSON when stdout is not a terminal, coloured key-values when it is
    format: Literal["auto", "json", "console"] = "auto"


#: what a node may do; every node does all of them unless ``engine.roles`` says otherwise
Role = Literal["intake", "hl7", "worklist", "mpps", "routing", "delivery", "admin"]
ALL_ROLES: tuple[Role, ...] = ("intake", "hl7", "worklist", "mpps", "routing", "delivery",
                               "admin")


def _check_node_id(value: str) -> str:
    # It becomes part of lease owners, spool names and metric labels: keep it to characters
    # every one of those accepts.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
        raise ValueError(f"{value!r}: a node id is 1-63 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value


def default_node_id() -> str:
    """The host name up to its first dot (a container's host name changes with every start:
    set ``engine.node_id`` there)."""
    name = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:63]
    return cleaned or "radflow"


class EngineSettings(_Strict):
    #: on SIGTERM, how long in-flight associations and messages may take to finish
    shutdown_grace: float = Field(default=30.0, ge=0)
    #: worker processes on this machine sharing the DICOM and MLLP ports; ``auto``: one per
    #: core. More than one needs ``storage.backend: postgresql``.
    workers: int | Literal["auto"] = Field(default=1)
    #: this node's identity in lease owners, spool file names, logs and metrics; unique per
    #: node and stable across restarts (default: the host name)
    node_id: Annotated[str, AfterValidator(_check_node_id)] = Field(
        default_factory=default_node_id)
    #: what this node does (default: everything)
    roles: list[Role] = Field(default_factory=lambda: list(ALL_ROLES), min_length=1)
    #: on PostgreSQL: seconds after which an instance that another node or worker acknowledged
    #: but never marked durable (it was killed in between) is checked whole and taken over
    #: here, so it is routed (``delivery.lease_seconds`` when that is shorter); keep study
    #: ``quiet_seconds`` well above it
    takeover_seconds: float = Field(default=10.0, ge=1.0, le=3600.0)

    @model_validator(mode="after")
    def _workers_in_range(self) -> EngineSettings:
        if isinstance(self.workers, int) and not 1 <= self.workers <= 64:
            raise ValueError(f"engine.workers is {self.workers}: give 1 to 64, or auto")
        return self

    @property
    def worker_count(self) -> int:
        """``workers`` with ``auto`` resolved to this machine's usable cores."""
        if self.workers == "auto":
            return max(1, min(64, len(os.sched_getaffinity(0))))
        return self.workers

    def has(self, role: Role) -> bool:
        return role in self.roles


class SiteSettings(_Strict):
    name: str = "radflow"
    #: IANA time zone the console shows times in (e.g. Europe/Berlin); unset: the host's
    time_zone: str | None = None

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as "
                                 "Europe/Berlin)") from None
        return value


class Settings(_Strict):
    """The whole validated configuration."""

    site: SiteSettings = Field(default_factory=SiteSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    hl7: Hl7Settings = Field(default_factory=Hl7Settings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    query_retrieve: QueryRetrieveSettings = Field(default_factory=QueryRetrieveSettings)
    #: named destinations; routes refer to them by name
    destinations: dict[str, Destination] = Field(default_factory=dict)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    commitment: CommitmentSettings = Field(default_factory=CommitmentSettings)

    @model_validator(mode="after")
    def _workers_need_a_shared_database(self) -> Settings:
        # SQLite serialises writers on one file lock and radflow's SQLite store is built around
        # one writer thread in one process: its claims, start-up recovery (orphan sweep, lease
        # release) and group timers assume no other process writes the same journal.
        if self.engine.worker_count > 1 and self.storage.backend == "sqlite":
            raise ValueError(
                f"engine.workers is {self.engine.workers} ({self.engine.worker_count} "
                "processes) but storage.backend is sqlite: SQLite lets one process write at a "
                "time and radflow's SQLite store assumes it is the only writer, so several "
                "workers would wait on each other and could each recover the others' work; "
                "use storage.backend: postgresql for several workers, or engine.workers: 1")
        return self

    @model_validator(mode="after")
    def _audit_names(self) -> Settings:
        reserved = {AUDIT_REPOSITORY, AUDIT_FILE, COMMITMENT_REPORTS} & set(self.destinations)
        if reserved:
            raise ValueError(f"destination name(s) {sorted(reserved)} are reserved for the "
                             "audit trail's and Storage Commitment's queues")
        unknown_archive = [n for n in self.commitment.archive_destinations
                           if n not in self.destinations]
        if unknown_archive:
            raise ValueError("commitment.archive_destinations names unknown destination(s) "
                             f"{unknown_archive}")
        cannot_confirm = [n for n in self.commitment.archive_destinations
                          if self.destinations[n].type not in ("dimse", "dicomweb")]
        if cannot_confirm:
            raise ValueError("commitment.archive_destinations must be dimse or dicomweb "
                             f"destinations (they confirm storage): {cannot_confirm}")
        on_archive = [f"commitment.modalities ({m.ae_title})" for m in self.commitment.modalities
                      if m.policy == "on_archive"]
        if self.commitment.policy == "on_archive":
            on_archive.insert(0, "commitment.policy")
        if on_archive and not self.commitment.archive_destinations:
            raise ValueError(f"{', '.join(on_archive)} say on_archive but "
                             "commitment.archive_destinations is empty: name the archive(s) "
                             "that must confirm each instance (a route's own archives are set "
                             "with its commitment:)")
        unknown = [n for n in self.audit.export_destinations or [] if n not in self.destinations]
        if unknown:
            raise ValueError(f"audit.export_destinations names unknown destination(s) {unknown}")
        return self


@dataclass(frozen=True)
class SettingsProblem:
    """One configuration error: where it is and what is wrong."""

    source: str  # file name or ``environment``
    line: int | None
    path: str  # key path, e.g. ``dicom.listeners[0].port``
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.path or '<root>'}: {self.message}"


class SettingsError(ConfigError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, problems: list[SettingsProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


PathKey = tuple[str | int, ...]


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_PLAIN_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})


def _compose_with_lines(text: str) -> tuple[Any, dict[PathKey, int]]:
    """Parse YAML safely and remember the line of every key and list item."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[PathKey, int] = {}
    if node is None:
        return {}, lines
    constructor = yaml.SafeLoader("")

    def walk(n: yaml.Node, path: PathKey) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, (yaml.MappingNode, yaml.SequenceNode)) and n.tag not in _PLAIN_TAGS:
            # Scalars go through SafeLoader's constructor (which refuses unknown tags); a tag
            # on a mapping or list (``!!python/object/apply``) must be refused here.
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {n.tag!r} is not allowed", n.start_mark)
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = walk(value_node, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return walk(node, ()), lines


def _apply_env(
    data: dict[str, Any], environ: Mapping[str, str], problems: list[SettingsProblem]
) -> set[PathKey]:
    """Overlay ``RADFLOW_<SECTION>__<KEY>`` variables onto ``data``; return the paths they set."""
    touched: set[PathKey] = set()
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        path: PathKey = tuple(int(p) if p.isdigit() else p for p in parts)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        value = value if isinstance(value, (list, dict)) else raw  # scalars: pydantic coerces
        node: Any = data
        for i, key in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, dict) and isinstance(key, str):
                node = node.setdefault(key, [] if isinstance(nxt, int) else {})
            elif isinstance(node, list) and isinstance(key, int):
                while len(node) <= key:
                    node.append({})
                node = node[key]
            else:
                problems.append(
                    SettingsProblem("environment", None, format_path(path), f"{name}: no such key")
                )
                break
        else:
            last = path[-1]
            if isinstance(node, dict) and isinstance(last, str):
                node[last] = value
                touched.add(path)
            elif isinstance(node, list) and isinstance(last, int):
                while len(node) <= last:
                    node.append({})
                node[last] = value
                touched.add(path)
            else:
                problems.append(
                    SettingsProblem("environment", None, format_path(path), f"{name}: no such key")
                )
    return touched


def _data_path(data: Any, loc: tuple[Any, ...]) -> PathKey:
    """``loc`` without pydantic's inner labels (a discriminated union's tag, for instance):
    a non-final part that is not a key of the data at that point is dropped."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif not last:
            continue
        out.append(part)
    return tuple(out)


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, override and validate the configuration; raise :class:`SettingsError` listing all
    problems at once."""
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    environ = os.environ if environ is None else environ
    source = str(config_path)
    problems: list[SettingsProblem] = []
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError([SettingsProblem(source, None, "", f"cannot read: {exc}")]) from exc
    try:
        data, lines = _compose_with_lines(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise SettingsError(
            [SettingsProblem(source, line, "", f"invalid YAML: {exc.problem}")]
        ) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError([SettingsProblem(source, 1, "", "the top level must be a mapping")])
    env_paths = _apply_env(data, environ, problems)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _data_path(data, tuple(err["loc"]))
            from_env = any(loc[: len(p)] == p or (p[: len(loc)] == loc and loc not in lines)
                           for p in env_paths)
            line = None
            if not from_env:
                for cut in range(len(loc), -1, -1):
                    if loc[:cut] in lines:
                        line = lines[loc[:cut]]
                        break
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(
                SettingsProblem("environment" if from_env else source, line, format_path(loc),
                                message)
            )
        raise SettingsError(problems) from exc
    if problems:
        raise SettingsError(problems)
    _check_cross_references(settings, source, lines, problems)
    if problems:
        raise SettingsError(problems)
    written = {where for where in lines
                if not any(where[: len(p)] == p for p in env_paths)}
    resolved: Settings = _resolve_paths(settings, config_path.parent.absolute(), written, ())
    return resolved


def _resolve_paths(model: _M, base: Path, written: set[PathKey], where: PathKey) -> _M:
    """``model`` with every relative :class:`~pathlib.Path` written in the file (a key path in
    ``written``) made absolute against ``base``.

    Walks the model generically, so a path key added later is covered without a list to keep
    up to date.
    """
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        new = _resolve_value(value, base, written, (*where, name))
        if new is not value:
            updates[name] = new
    return model.model_copy(update=updates) if updates else model


def _resolve_value(value: Any, base: Path, written: set[PathKey], where: PathKey) -> Any:
    if isinstance(value, Path):
        if value.is_absolute() or where not in written:
            return value
        # normpath: "/etc/radflow/../x" would read badly in logs and errors
        return Path(os.path.normpath(base / value))
    if isinstance(value, BaseModel):
        return _resolve_paths(value, base, written, where)
    if isinstance(value, list | tuple):
        items = [_resolve_value(v, base, written, (*where, i)) for i, v in enumerate(value)]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return type(value)(items)
        return value
    if isinstance(value, dict):
        entries = {k: _resolve_value(v, base, written, (*where, k)) for k, v in value.items()}
        if any(entries[k] is not value[k] for k in value):
            return entries
        return value
    return value


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def _check_cross_references(
    settings: Settings, source: str, lines: dict[PathKey, int], problems: list[SettingsProblem]
) -> None:
    """Listeners that could not all bind: the same port on the same or a wildcard address."""
    bound: list[tuple[str, int, str]] = []
    sockets: list[tuple[PathKey, str, int]] = []
    sockets += [(("dicom", "listeners", i), lst.host, lst.port)
                for i, lst in enumerate(settings.dicom.listeners)]
    sockets += [(("hl7", "listeners", i), lst.host, lst.port)
                for i, lst in enumerate(settings.hl7.listeners)]
    for where, host, port in sockets:
        for other_host, other_port, other in bound:
            if port == other_port and (host == other_host or host in _WILDCARD_HOSTS
                                       or other_host in _WILDCARD_HOSTS):
                path: PathKey = (*where, "port")
                problems.append(SettingsProblem(
                    source, lines.get(path) or lines.get(where), format_path(path),
                    f"port {port} is already used by {other}"))
                break
        bound.append((host, port, format_path(where)))
