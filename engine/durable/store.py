"""The store interface: every durable row radflow keeps, behind one typed async API.

Callers (ingress, pipeline, admin) depend only on :class:`Store` and the record types here; the
SQL lives in one package per database beside this module (``sqlite/``; another backend adds a
package and a branch in :func:`open_store`, not changes to callers). The store never decides
protocol answers: decisions it must make inside a transaction (duplicate SOP Instance UIDs) are
pure functions passed in from the domain.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from engine.records.worklist import StoredWorklistItem, WorklistItem, WorklistStatus
from engine.records.worklist_criteria import Constraint
from engine.settings import StorageSettings

if TYPE_CHECKING:
    from engine.durable.access import ChangeRecord, SessionRecord, TokenRecord, UserRecord
    from engine.durable.commitment import (
        CommitmentPlan,
        CommitmentReport,
        CommitmentRequest,
        CommitmentResult,
        HeldInstance,
    )
    from engine.durable.qr import QrIndexRow, QrLocated, QrQuery, QrRecord
    from engine.durable.routing import (
        BuildGroupRows,
        FiredGroup,
        OpenGroup,
        ProcedureStepEventRecord,
        RoutingCommitResult,
        RoutingPlan,
    )
    from engine.durable.trace import TraceBy, TraceRecords
    from engine.observability.recent_errors import ErrorNote
    from engine.records.procedure_step import (
        NewProcedureStep,
        PpsStatus,
        ProcedureStep,
        ProcedureStepCommit,
        StepUpdate,
        WorklistLink,
    )


class DuplicatePolicy(StrEnum):
    VERSION = "version"
    IGNORE = "ignore"
    REJECT = "reject"


class InstanceOutcome(StrEnum):
    """What the journal did with one received instance."""

    STORED = "stored"  # a new SOP Instance UID
    NEW_VERSION = "new_version"  # a known UID with different bytes, kept as a new version
    IDENTICAL = "identical"  # the same bytes again: nothing new kept
    IGNORED = "ignored"  # a known UID with different bytes, dropped by policy
    REJECTED = "rejected"  # a known UID with different bytes, refused by policy


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A received instance as the journal keeps it."""

    object_id: str
    spool_path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    accession_number: str | None
    modality: str | None
    calling_ae: str
    called_ae: str
    peer_host: str
    listener: str
    size_bytes: int
    sha256: str
    received_at: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """A journal row as read back."""

    id: int
    version: int
    record: InstanceRecord
    routed_at: str | None
    superseded: bool


@dataclass(frozen=True, slots=True)
class ExpiredInstance:
    """A journal row past the spool's retention, with the file to remove."""

    id: int
    spool_path: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class JournalPurge:
    """What one pass of journal retention deleted."""

    hl7_messages: int = 0
    procedure_steps: int = 0


@dataclass(frozen=True, slots=True)
class InstanceCommit:
    """One instance to commit in a group commit, with the policy for a known UID.

    ``file_durable=False``: the spool file's fsync runs beside this commit, so the row is
    written "not yet durable" and marked later (:meth:`Store.mark_instances_durable`); until
    then nothing routes it, and a start after a crash checks its file (:meth:`Store.
    instances_not_durable`)."""

    record: InstanceRecord
    policy: DuplicatePolicy
    file_durable: bool = True


@dataclass(frozen=True, slots=True)
class InstanceCommitResult:
    outcome: InstanceOutcome
    journal_id: int | None  # the new row's id (or the existing one for identical/ignored)
    version: int


def decide_duplicate(
    existing_sha256: str | None, existing_size: int | None, new: InstanceRecord,
    policy: DuplicatePolicy,
) -> InstanceOutcome:
    """The duplicate SOP Instance UID policy, pure so every backend applies it the same way."""
    if existing_sha256 is None:
        return InstanceOutcome.STORED
    if existing_sha256 == new.sha256 and existing_size == new.size_bytes:
        return InstanceOutcome.IDENTICAL
    return {
        DuplicatePolicy.VERSION: InstanceOutcome.NEW_VERSION,
        DuplicatePolicy.IGNORE: InstanceOutcome.IGNORED,
        DuplicatePolicy.REJECT: InstanceOutcome.REJECTED,
    }[policy]


# --- HL7 journal and worklist ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hl7JournalEntry:
    """One received HL7 message as the journal keeps it (raw bytes included).

    The idempotency key (sending application, sending facility, control id) is None when the
    message could not be parsed: such messages are kept but never recognised as repeats.
    """

    sending_application: str | None
    sending_facility: str | None
    control_id: str | None
    message_type: str | None
    trigger_event: str | None
    peer_host: str
    listener: str
    received_at: str  # ISO 8601, UTC
    raw: bytes


@dataclass(frozen=True, slots=True)
class Hl7Disposition:
    """What the domain decided for one message, recorded with it.

    ``applied=False`` makes the store undo the message's worklist writes (its savepoint) before
    recording it. ``retryable`` marks an answer that depended on the moment (an internal
    error): a repeat of that message is processed again instead of answered from the journal.
    """

    ack_code: str
    errors_json: str
    text: str | None
    worklist_item_ids: tuple[int, ...]
    applied: bool
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Hl7CommitResult:
    journal_id: int
    disposition: Hl7Disposition
    duplicate: bool  # the disposition is the one recorded for an earlier copy


@dataclass(frozen=True, slots=True)
class Hl7JournalRecord:
    """A journal row as read back (``raw`` only when asked for)."""

    id: int
    entry: Hl7JournalEntry
    ack_code: str
    errors_json: str
    text: str | None
    worklist_item_ids: tuple[int, ...]



# --- outbox (D3) -----------------------------------------------------------------------------
class OutboxState(StrEnum):
    """Where an outbox row is in its life: routed rows start ``pending``."""

    PENDING = "pending"  # waiting for its ``next_attempt_at``
    LEASED = "leased"  # a worker holds it until ``lease_until`` (then it comes back)
    DONE = "done"  # delivered (kept for a while as an audit trail, then purged)
    DEAD = "dead"  # given up on: an operator retries or purges it


@dataclass(frozen=True, slots=True)
class NewOutboxRow:
    """A row to enqueue. The router writes these in its own transaction (with the journal's
    "routed" mark); :meth:`Store.enqueue_outbox` is for operators, tests, the demo and benches."""

    destination: str
    kind: str
    payload: str  # JSON, frozen: a retry sends exactly what the first attempt sent
    source_table: str = "instances"
    source_id: int = 0
    route: str = ""
    study_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A row as the dispatcher leased it (``attempts`` already counts this lease)."""

    id: int
    destination: str
    kind: str
    source_table: str
    source_id: int
    route: str
    payload: str
    study_instance_uid: str | None
    attempts: int
    created_at: float  # epoch seconds
    last_error: str | None


class OutboxVerdict(StrEnum):
    """What the dispatcher decided for one leased row."""

    DONE = "done"
    RETRY = "retry"  # back to pending at ``next_attempt_at``
    DEAD = "dead"
    RELEASE = "release"  # not tried after all (shutdown, ordering): the attempt is given back


@dataclass(frozen=True, slots=True)
class OutboxResult:
    id: int
    verdict: OutboxVerdict
    next_attempt_at: float | None = None  # RETRY (and optionally RELEASE)
    error: str | None = None
    #: the lease's attempt number (``OutboxRow.attempts``): a fencing token, so a verdict for an
    #: attempt whose lease expired and was taken again is ignored (None: owner check only)
    attempt: int | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One destination's queue: counts by state and the age of its oldest undelivered row."""

    destination: str
    pending: int
    leased: int
    dead: int
    oldest_created_at: float | None  # of pending and leased rows


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered row, with the error that gave it up."""

    id: int
    destination: str
    kind: str
    source_table: str
    source_id: int
    route: str
    study_instance_uid: str | None
    attempts: int
    last_error: str | None
    created_at: float
    updated_at: float
    payload: str


class WorklistTxn(Protocol):
    """The worklist inside one open transaction, on the store's writer thread (synchronous)."""

    def items_for_order(self, placer: str, filler: str) -> list[StoredWorklistItem]:
        """Items with this placer order number (or, if ``placer`` is empty, filler number)."""
        ...

    def items_for_patient(self, patient_id: str, issuer: str | None) -> list[StoredWorklistItem]:
        """Items of a patient (``issuer=None``: any issuer)."""
        ...

    def insert_item(self, item: WorklistItem) -> int: ...

    def update_item(self, item_id: int, item: WorklistItem) -> None: ...


#: the domain's decision for message ``index`` of a batch, made inside the transaction
Hl7Apply = Callable[[WorklistTxn, int], Hl7Disposition]


class Store(Protocol):
    """What radflow needs from a database. Every method is safe to call from the loop."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def clock_offset(self) -> float | None:
        """Seconds the database server's clock is ahead of this process's clock (negative:
        behind), or None when there is nothing to compare (an embedded database on this
        machine) or the server did not answer. Leases written by one node are judged expired
        by another's clock, so a node whose clock is far off can take over a live lease."""
        ...

    async def schema_version(self) -> int: ...

    def watch_outbox(self, wake: Callable[[str | None], None]) -> None:
        """Call ``wake(destination)`` when any process adds outbox rows (a hint: the
        dispatcher also polls). A backend with one process per database does nothing."""
        ...

    async def commit_instances(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> list[InstanceCommitResult]:
        """Apply ``batch``: its new instances and the ``durable_ids`` marks
        (:meth:`mark_instances_durable` without a commit of its own) in one transaction, and a
        backend may judge the instances whose SOP Instance UID was already known in a second
        one. ``sync`` (a zero-argument callable) runs first, in the writer's thread. Raises
        :class:`~engine.errors.PartlyCommitted` when only the first transaction went
        through, any other ``StorageFailure`` when nothing of the batch was kept."""
        ...

    def submit_instance_commits(
        self, batch: Sequence[InstanceCommit], sync: Callable[[], None] | None = None,
        durable_ids: Sequence[int] = (),
    ) -> concurrent.futures.Future[list[InstanceCommitResult]]:
        """:meth:`commit_instances` from any thread, without the event loop: the one write a
        peer is waiting on (a C-STORE's Success), so it goes ahead of other queued writes and
        its caller's thread is woken straight from the writer's."""
        ...

    async def mark_instances_durable(self, ids: Sequence[int]) -> None:
        """Record that these rows' spool files (and directory entries) are fsync'd."""
        ...

    async def instances_not_durable(self) -> list[StoredInstance]:
        """Rows committed beside their file's fsync and never marked durable: after a crash,
        the ones whose file may not have reached the disk. Oldest first."""
        ...

    async def withdraw_instance(self, instance_id: int) -> bool:
        """Delete a never-acknowledged, unrouted, not-durable row (its file failed or is gone),
        making the version it superseded current again. ``False`` if the row is not such a
        row (already durable, routed, or absent): then nothing changes."""
        ...

    async def get_instance(self, sop_instance_uid: str) -> StoredInstance | None: ...

    async def list_instances(self, limit: int = 100, offset: int = 0) -> list[StoredInstance]: ...

    async def count_instances(self) -> int: ...

    async def instances_after(self, after_id: int, limit: int,
                              study_instance_uid: str | None = None) -> list[StoredInstance]:
        """Instance rows (every version) with ``id > after_id`` in id order, optionally of one
        study: a keyset walk over the journal (``radflow spool verify``)."""
        ...

    async def known_object_ids(self, object_ids: Sequence[str]) -> set[str]: ...

    async def expired_instances(self, received_before: str, limit: int
                                ) -> list[ExpiredInstance]:
        """Instances received before ``received_before`` (ISO 8601) whose file nothing needs
        any more: routed, every outbox row for them delivered (or purged), in no open routing
        group. Oldest first, at most ``limit``."""
        ...

    async def forget_instances(self, ids: Sequence[int]) -> int:
        """Delete these journal rows (and their fired-group memberships), re-checking in the
        transaction that nothing needs them; the number deleted."""
        ...

    async def purge_journal(self, before: str, limit: int) -> JournalPurge:
        """In one transaction, delete up to ``limit`` HL7 messages received before ``before``
        (ISO 8601) and up to ``limit`` finished MPPS steps last updated before it (with their
        events and instance lists), each only once nothing needs it: routed (or never to be
        routed), every outbox row it made delivered (or purged), and, for a step, not awaiting
        the instances that complete its study."""
        ...

    # --- HL7 journal -----------------------------------------------------------------------
    async def commit_hl7_batch(self, entries: Sequence[Hl7JournalEntry], apply: Hl7Apply,
                               order_keys: Sequence[tuple[str, str]] = ()
                               ) -> list[Hl7CommitResult]:
        """Journal ``entries`` in ONE transaction, each in its own savepoint.

        For each entry: a known idempotency key with a final disposition returns that (and
        changes nothing); otherwise ``apply(txn, index)`` writes the worklist and decides, and
        the entry is recorded with its disposition. A failure of the whole transaction raises
        :class:`~engine.errors.StorageFailure` and nothing of the batch is kept.
        ``order_keys``: the (placer, filler) order numbers the ``apply`` calls will look up, a
        hint a backend may use to read them all ahead; lookups still see the batch's writes.
        """
        ...

    async def trace(self, by: TraceBy, value: str) -> TraceRecords:
        """What the store holds for one accession number, Study Instance UID or patient ID:
        HL7 messages, worklist items, MPPS steps, instances per study, routing groups and
        deliveries (:mod:`engine.durable.trace`); bounded by ``TRACE_LIMIT``."""
        ...

    async def list_hl7_messages(self, ack_codes: Sequence[str] | None = None, limit: int = 100,
                                offset: int = 0) -> list[Hl7JournalRecord]: ...

    async def count_hl7_messages(self, ack_codes: Sequence[str] | None = None) -> int: ...

    async def get_hl7_message(self, journal_id: int) -> Hl7JournalRecord | None: ...

    # --- worklist --------------------------------------------------------------------------
    async def find_worklist(self, constraints: Sequence[Constraint],
                            statuses: Sequence[WorklistStatus], limit: int, offset: int = 0,
                            newest_first: bool = False) -> list[StoredWorklistItem]:
        """Items in ``statuses`` meeting every constraint, through the indexes (a superset of
        an MWL answer: the caller makes the exact check)."""
        ...

    async def count_worklist(self, constraints: Sequence[Constraint],
                             statuses: Sequence[WorklistStatus]) -> int: ...

    async def get_worklist_item(self, item_id: int) -> StoredWorklistItem | None: ...

    async def add_worklist_items(self, items: Sequence[WorklistItem]) -> list[int]:
        """Insert items in one transaction (the HTTP API, the CLI, bulk seeding)."""
        ...

    async def update_worklist_item(self, item_id: int,
                                   change: Callable[[WorklistItem], WorklistItem]
                                   ) -> StoredWorklistItem | None:
        """Read, ``change`` (a pure function; it may raise to refuse) and write one item in one
        transaction; None if there is no such item."""
        ...

    async def delete_worklist_item(self, item_id: int) -> bool: ...

    async def purge_worklist(self, statuses: Sequence[WorklistStatus], updated_before: str
                             ) -> int:
        """Delete items in ``statuses`` last changed before ``updated_before`` (ISO 8601)."""
        ...

    async def worklist_counts(self) -> dict[WorklistStatus, int]: ...

    # --- routing (engine.durable.routing) ----------------------------------------------------
    async def commit_routing(self, plans: Sequence[RoutingPlan], now_iso: str, now: float
                             ) -> list[RoutingCommitResult]:
        """Apply ``plans`` in ONE transaction (D3): per plan, mark the journal entry routed if it
        was not yet, insert its outbox rows and join its series/study groups."""
        ...

    async def fire_routing_group(self, group_id: int, reason: str, now: float,
                                 build: BuildGroupRows) -> FiredGroup | None:
        """Insert an open group's outbox rows (built by ``build`` inside the transaction) and
        mark it fired; None when it is no longer open."""
        ...

    async def open_routing_groups(self, study_instance_uid: str | None = None
                                  ) -> list[OpenGroup]: ...

    async def unrouted_instances(self, after_id: int, limit: int) -> list[StoredInstance]: ...

    async def instances_by_ids(self, ids: Sequence[int]) -> list[StoredInstance]: ...

    async def unrouted_hl7_messages(self, after_id: int, limit: int
                                    ) -> list[Hl7JournalRecord]:
        """Accepted (AA) HL7 messages not routed yet, with their raw bytes."""
        ...

    # MPPS events → routing
    async def unrouted_procedure_step_events(self, after_id: int, limit: int,
                                             ids: Sequence[int] | None = None
                                             ) -> list[ProcedureStepEventRecord]:
        """``procedure_step_events`` rows not routed yet (after ``after_id``, or only ``ids``),
        with their step and its linked worklist items."""
        ...

    async def unmatched_instances(self, limit: int, offset: int
                                  ) -> tuple[int, list[StoredInstance]]: ...

    async def routing_counts(self) -> dict[str, int]: ...

    # --- outbox (D3): the dispatcher's side; SQL in sqlite/outbox.py ----------------------
    async def enqueue_outbox(self, rows: Sequence[NewOutboxRow], now: float) -> list[int]:
        """Insert pending rows (ready at ``now``) in one transaction; their ids."""
        ...

    async def lease_outbox(self, destination: str, owner: str, now: float,
                           lease_seconds: float, limit: int, per_study: bool = False
                           ) -> list[OutboxRow]:
        """Take up to ``limit`` ready rows of ``destination`` for ``owner`` until
        ``now + lease_seconds`` (expired leases of that destination come back first); each
        lease counts as an attempt. ``per_study``: a row is taken only when every earlier
        undelivered row of its study is ready and taken with it."""
        ...

    async def record_outbox(self, owner: str, results: Sequence[OutboxResult], now: float
                            ) -> int:
        """Apply the dispatcher's verdicts in one transaction; rows no longer leased by
        ``owner`` (lease expired and taken by another) are left alone. Rows changed."""
        ...

    async def release_outbox_leases(self, owner_prefix: str, keep_owner: str) -> int:
        """Give back leases of earlier runs of this node (owner starting with
        ``owner_prefix``, other than ``keep_owner``) without counting them as attempts."""
        ...

    async def outbox_stats(self, destinations: Sequence[str]) -> list[QueueStats]: ...

    async def list_dead_letters(self, destination: str | None, limit: int = 100,
                                offset: int = 0) -> list[DeadLetter]: ...

    async def count_dead_letters(self, destination: str | None) -> int: ...

    async def retry_dead_letters(self, destination: str, ids: Sequence[int] | None,
                                 now: float) -> int:
        """Dead rows (all of the destination's, or ``ids``) back to pending with a fresh
        attempt count; how many."""
        ...

    async def purge_dead_letters(self, destination: str, ids: Sequence[int] | None) -> int: ...

    async def purge_done_outbox(self, done_before: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` delivered rows older than ``done_before``."""
        ...

    async def outbox_rows(self, destination: str | None = None,
                          states: Sequence[OutboxState] = ()) -> list[dict[str, object]]:
        """Every matching row as a dict (tests and small diagnostics only: unbounded)."""
        ...

    # --- procedure steps (MPPS, engine.procedure); SQL in sqlite/mpps.py --------------------
    async def create_procedure_step(
        self, new: NewProcedureStep,
        decide: Callable[[Sequence[StoredWorklistItem]], WorklistLink]) -> ProcedureStepCommit:
        """In ONE transaction: refuse a known SOP Instance UID (``DuplicateProcedureStep``),
        link the worklist items ``decide`` picks among those with the step's Study Instance
        UIDs or Accession Numbers (and write their new status), insert the step and its
        Started journal row."""
        ...

    async def set_procedure_step(
        self, sop_instance_uid: str, change: Callable[[ProcedureStep], StepUpdate],
        decide: Callable[[PpsStatus], Callable[[Sequence[StoredWorklistItem]], WorklistLink]],
        now: str) -> ProcedureStepCommit:
        """In ONE transaction: ``NoSuchProcedureStep`` for an unknown UID; ``change`` (pure,
        may raise to refuse) gives the new state; a final state also moves the linked items
        (``decide``), journals the event and keeps a COMPLETED step's listed instances (the
        result names those not in the instance journal yet)."""
        ...

    async def link_unscheduled_procedure_steps(
        self, item_ids: Sequence[int] | None,
        decide: Callable[[PpsStatus], Callable[[Sequence[StoredWorklistItem]], WorklistLink]],
        now: str) -> list[ProcedureStepCommit]:
        """In ONE transaction: link steps that started without a worklist item to the active
        items (``item_ids``, or all when None) with their Accession Number or Study Instance
        UID, move those items (``decide``) and journal a ``link`` event per linked step."""
        ...

    async def get_procedure_step(self, sop_instance_uid: str) -> ProcedureStep | None: ...

    async def list_procedure_steps(self, status: str | None = None,
                                   unscheduled: bool | None = None, limit: int = 100,
                                   offset: int = 0) -> tuple[int, list[ProcedureStep]]: ...

    async def procedure_steps_awaiting(self) -> list[tuple[ProcedureStep, tuple[str, ...]]]:
        """COMPLETED steps listing instances whose study is not marked complete yet, each
        with the listed SOP Instance UIDs not received yet."""
        ...

    async def mark_procedure_step_complete(self, step_id: int, now: str) -> bool: ...

    # --- singletons among processes ------------------------------------------------------------
    async def hold_lead(self, duty: str) -> bool:
        """Whether this process is the one among every process on this store that does
        ``duty`` (taken when free; kept while this process and its connection live, then
        free for another). For work that needs doing once for all of them, where each doing
        it too only repeats it (the Q/R indexer)."""
        ...

    # --- Query/Retrieve index (engine.durable.qr); SQL in sqlite/qr.py -----------------------
    async def qr_index_watermark(self) -> int:
        """The last journal row the Q/R index has taken in (0: none)."""
        ...

    async def qr_index(self, rows: Sequence[QrIndexRow], last_instance_id: int) -> int:
        """Add (or replace, for a newer version) these index rows and move the watermark to
        ``last_instance_id``, in one transaction; rows whose journal entry is gone are
        skipped. The number written."""
        ...

    async def qr_find(self, query: QrQuery) -> list[QrRecord]:
        """C-FIND answers at ``query.level`` (at most ``query.limit + 1``)."""
        ...

    async def qr_locate(self, query: QrQuery) -> list[QrLocated]:
        """The instances (with their spooled files) a C-MOVE or C-GET names (at most
        ``query.limit + 1``)."""
        ...

    # --- Storage Commitment (engine.durable.commitment); SQL in sqlite/commitment.py ----------
    async def commit_commitment_request(self, request: CommitmentRequest,
                                        plan: CommitmentPlan, now: float) -> CommitmentResult:
        """Record a request in ONE transaction and decide there what can be decided already
        (an ``on_receipt`` one always), its report queued in the outbox. A Transaction UID
        seen before from the same AE changes nothing (``duplicate``)."""
        ...

    async def waiting_commitments(self, limit: int) -> list[tuple[int, CommitmentRequest]]:
        """``on_archive`` and ``by_route`` requests not reported yet, oldest first."""
        ...

    async def resolve_commitment(self, request_id: int, request: CommitmentRequest,
                                 plan: CommitmentPlan, now: float) -> CommitmentReport | None:
        """In ONE transaction, queue the report of a waiting request once every instance is
        confirmed by the archives ``plan`` says it needs (and, for committing ones, by their
        own commitment answer), or its deadline passed. Any node may call it: the request row
        is locked, so a request is reported once."""
        ...

    async def commitment_holdings(self, sop_instance_uids: Sequence[str]
                                  ) -> dict[str, HeldInstance]:
        """The current journal rows of these instances, with what their routes asked for."""
        ...

    async def commitment_delivered(self, sop_instance_uids: Sequence[str], destination: str
                                   ) -> set[str]:
        """Which of these instances ``destination`` has delivered (outbox rows done)."""
        ...

    async def record_commitment_ask(self, request_id: int, destination: str,
                                    transaction_uid: str, sent: bool, now: float = 0.0,
                                    claim_seconds: float = 0.0) -> bool:
        """Remember that radflow asks (``sent=False``: before the N-ACTION, so an answer that
        comes at once finds it) or asked ``destination`` for commitment with this UID.
        With ``claim_seconds``, ``sent=False`` is a claim: False (nothing changed) when the
        archive was already asked, or another process claimed the ask in the last
        ``claim_seconds``, so several processes watching one database ask once."""
        ...

    async def record_archive_commitment(self, transaction_uid: str,
                                        results: dict[str, int]) -> bool:
        """An archive's answer (SOP Instance UID -> Failure Reason, 0 committed) to radflow's
        own request; False if no waiting request asked with ``transaction_uid``."""
        ...

    # --- access control (users, API tokens, the changes table) ------------------------------
    async def count_users(self) -> int: ...

    async def get_user(self, name: str) -> UserRecord | None: ...

    async def list_users(self) -> list[UserRecord]: ...

    async def add_user(self, name: str, role: str, password_hash: str, now: str) -> bool:
        """False when the name is taken."""
        ...

    async def update_user(self, name: str, now: str, role: str | None = None,
                          password_hash: str | None = None) -> bool:
        """A new password also clears the lock-out and ends the user's console sessions;
        False when there is no such user."""
        ...

    async def remove_user(self, name: str) -> bool:
        """The user, their tokens and console sessions; False when there is no such user."""
        ...

    async def set_login_state(self, name: str, failed_logins: int, locked_until: float
                              ) -> None:
        """A lock-out (``locked_until`` > 0) also ends the user's console sessions."""
        ...

    async def add_session(self, session: SessionRecord, expired_before: float) -> None:
        """Open a console session, removing those last seen before ``expired_before``."""
        ...

    async def get_session(self, id_hash: str) -> SessionRecord | None: ...

    async def touch_session(self, id_hash: str, now: float) -> None:
        """Note a session's use (a hint: a lost touch only shortens the session)."""
        ...

    async def end_session(self, id_hash: str) -> bool: ...

    async def add_token(self, user: str, label: str, token_hash: str, now: str) -> int: ...

    async def token_user(self, token_hash: str, now: str
                         ) -> tuple[TokenRecord, UserRecord] | None:
        """The live token with this hash and its user (noting its last use), else None."""
        ...

    async def list_tokens(self, user: str | None = None) -> list[TokenRecord]: ...

    async def revoke_token(self, token_id: int, now: str, user: str | None = None) -> bool:
        """Revoke a live token (of ``user`` when given); False when none matched."""
        ...

    async def record_change(self, change: ChangeRecord) -> None: ...

    # --- the most recent errors (the console's Overview) -------------------------------------
    async def record_errors(self, notes: Sequence[ErrorNote], merge_after: float, keep: int
                            ) -> None:
        """Add ``notes``; one seen again since ``merge_after`` adds to its row's count; only
        the newest ``keep`` rows stay."""
        ...

    async def recent_errors(self, limit: int, kinds: Sequence[str] | None = None
                            ) -> list[ErrorNote]:
        """Newest first (by the last time seen), of ``kinds`` when given."""
        ...

    async def list_changes(self, limit: int, offset: int) -> tuple[int, list[ChangeRecord]]:
        """Newest first, with the total."""
        ...


def open_store(settings: StorageSettings) -> Store:
    """Build the configured backend (not yet opened)."""
    if settings.backend == "postgresql":
        from engine.durable.postgresql import PostgresStore

        return PostgresStore(settings.postgresql)
    from engine.durable.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
