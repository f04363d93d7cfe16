"""Record types of routing's durable state: outbox rows to insert, plans, and open groups.

The pipeline builds a :class:`RoutingPlan` per journal entry (outbox rows plus the series/study
groups the entry joins) and the store applies a batch of plans in one transaction
(:meth:`~engine.durable.store.Store.commit_routing`). Series and study triggers wait in
:class:`OpenGroup` rows until their quiet period or maximum wait ends, or
``study_complete`` fires them; the outbox rows of a fired group are built inside the firing
transaction by a pure function the pipeline passes in (:data:`BuildGroupRows`). Plain data
only: no SQL, no policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from engine.durable.store import NewOutboxRow

if TYPE_CHECKING:
    from engine.durable.store import StoredInstance
    from engine.records.procedure_step import ProcedureStep
    from engine.records.worklist import StoredWorklistItem

# procedure_step_events: MPPS Started/Completed/Discontinued facts (MPPS → routing)
SourceTable = Literal["instances", "hl7_messages", "procedure_step_events"]
#: what routing made of one journal entry
RoutingOutcome = Literal["routed", "grouped", "discarded", "unmatched"]


@dataclass(frozen=True, slots=True)
class GroupJoin:
    """An instance joining the open series/study group of a route (opened if needed)."""

    route: str
    level: Literal["series", "study"]
    key: str  # the Series or Study Instance UID
    study_instance_uid: str | None
    quiet_seconds: float
    max_wait_seconds: float
    #: the route's decision (destinations, frozen morph steps) as JSON; the latest member's
    #: ruleset wins, so a reload before the group fires is taken into account
    decision: str


@dataclass(frozen=True, slots=True)
class ProcedureStepEventRecord:
    """One unrouted ``procedure_step_events`` row with what routing it needs: the step (as it
    is now), the attributes the event received (DICOM JSON: the N-CREATE Attribute List or the
    N-SET Modification List) and the step's linked worklist items (purged ones are absent)."""

    id: int
    operation: str  # create | set
    status: str  # IN PROGRESS | COMPLETED | DISCONTINUED
    received: str
    received_at: str  # ISO 8601 UTC
    step: ProcedureStep
    worklist_items: tuple[StoredWorklistItem, ...] = ()


@dataclass(frozen=True, slots=True)
class RoutingPlan:
    """What routing decided for one journal entry, applied in one transaction with others.
    ``rows`` are :class:`~engine.durable.store.NewOutboxRow` (destination, kind, payload JSON,
    source, route, study)."""

    source_table: SourceTable
    source_id: int
    outcome: RoutingOutcome
    rows: tuple[NewOutboxRow, ...] = ()
    groups: tuple[GroupJoin, ...] = ()
    #: instances: what the matched routes ask of Storage Commitment, as
    #: :func:`~engine.durable.commitment.encode_route_archives` wrote it (None: no route said)
    commitment: str | None = None


@dataclass(frozen=True, slots=True)
class OpenGroup:
    """A series/study group waiting to fire."""

    id: int
    route: str
    level: str
    key: str
    study_instance_uid: str | None
    first_at: float  # epoch seconds
    last_at: float
    quiet_seconds: float
    max_wait_seconds: float
    members: int

    @property
    def deadline(self) -> float:
        """When the group fires: after the quiet period, at the latest at the maximum wait."""
        return min(self.last_at + self.quiet_seconds, self.first_at + self.max_wait_seconds)

    def reason_at(self, now: float) -> str:
        return "max_wait" if now >= self.first_at + self.max_wait_seconds else "quiet"


class GroupNotDue(Exception):
    """A quiet-period firing found the group not due: another node added instances to it since
    this node last looked. ``group`` is the database's copy (its new deadline)."""

    def __init__(self, group: OpenGroup) -> None:
        super().__init__(f"group {group.id} not due until {group.deadline}")
        self.group = group


#: firing reasons that depend on the group's timestamps (checked against the database's)
TIMED_REASONS = frozenset({"quiet", "max_wait"})


@dataclass(frozen=True, slots=True)
class RoutingCommitResult:
    """One plan's result: ``applied`` is False when the entry had been routed already (a replay
    racing a bus event), in which case nothing was written for it."""

    applied: bool
    outbox_rows: int
    groups: tuple[OpenGroup, ...]


@dataclass(frozen=True, slots=True)
class FiredGroup:
    group: OpenGroup
    reason: str
    outbox_rows: int
    instances: int


#: builds a fired group's outbox rows inside the transaction: (decision JSON, member instances
#: that are not superseded, fire reason, group) -> rows. Pure; runs on the store's thread.
#: (decision, members, reason, group, study_instances): ``study_instances(uid)`` reads every
#: durable, current instance of a study inside the same transaction (for whole-study resources)
BuildGroupRows = Callable[[str, "Sequence[StoredInstance]", str, OpenGroup,
                           "Callable[[str], Sequence[StoredInstance]]"], list[NewOutboxRow]]
