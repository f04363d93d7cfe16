"""The procedure step service: MPPS N-CREATE / N-SET made durable, told, and used as evidence.

:class:`ProcedureStepService` runs on the loop. It commits each checked N-CREATE / N-SET in one
store transaction together with the linked worklist items (their moves decided by
:func:`~engine.procedure.model.worklist_link`, i.e. the worklist's own transition rules) and
the event's journal row, and only then publishes ``ProcedureStepStarted`` / ``Completed`` /
``Discontinued``. It keeps, in memory and rebuilt from the store at start, the instances that
COMPLETED steps list and that have not arrived yet; when the last one arrives (checked at N-SET
time against the instance journal, then on every ``InstanceStored``) it marks the step's study
complete and calls the router's ``study_complete`` at once. It must not decode DIMSE messages
(the handlers do) nor hold SQL (the store does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from engine.bus import EventBus
from engine.durable.store import Store
from engine.events import (
    InstanceStored,
    OrderReceived,
    ProcedureStepCompleted,
    ProcedureStepDiscontinued,
    ProcedureStepEvent,
    ProcedureStepStarted,
)
from engine.observability.logging import correlation, get_logger
from engine.observability.metrics import MPPS_STUDIES_COMPLETE, PROCEDURE_STEPS_LINKED
from engine.procedure.model import apply_set, worklist_link
from engine.records.procedure_step import (
    NewProcedureStep,
    PpsStatus,
    ProcedureStep,
    ProcedureStepCommit,
    StepUpdate,
    WorklistLink,
)
from engine.records.worklist import StoredWorklistItem

log = get_logger("engine.procedure")

StudyComplete = Callable[[str], Awaitable[int]]


def step_keys(step: ProcedureStep, items: Sequence[StoredWorklistItem] = ()
              ) -> dict[str, str]:
    """A step's correlation keys, for every log line about it; with the worklist items it
    moved, their order numbers too."""
    def joined(values: Sequence[str]) -> str:
        return ",".join(dict.fromkeys(v for v in values if v))

    return correlation(
        study_instance_uid=step.study_instance_uid, accession_number=step.accession_number,
        patient_id=step.patient_id,
        placer_order_number=joined([s.item.placer_order_number for s in items]),
        filler_order_number=joined([s.item.filler_order_number for s in items]))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ProcedureStepService:
    """Performed procedure steps of one engine."""

    def __init__(self, store: Store, bus: EventBus,
                 study_complete: StudyComplete | None = None) -> None:
        self.store = store
        self._bus = bus
        #: the router's ``study_complete`` (set by the engine once the router exists)
        self.study_complete = study_complete
        # COMPLETED steps still waiting for listed instances: step id -> missing UIDs, and the
        # reverse index so an InstanceStored costs one dict lookup when nothing waits for it.
        self._missing: dict[int, set[str]] = {}
        self._by_sop: dict[str, set[int]] = {}
        self._steps: dict[int, ProcedureStep] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Worklist items of orders accepted while a late-link sweep runs: the next sweep takes
        # them all (one store read per sweep, not per order, under a stream of orders).
        self._link_pending: set[int] = set()
        self._linking = False

    async def start(self) -> None:
        """Rebuild the completeness watch; steps whose instances all arrived while radflow was
        down are completed now."""
        for step, missing in await self.store.procedure_steps_awaiting():
            self._watch(step, missing)
        for step_id in [s for s, m in self._missing.items() if not m]:
            self._spawn(self._complete(step_id))
        # Orders that arrived while radflow was down (or whose linking a crash cut short).
        try:
            await self.link_late_orders(None)
        except Exception:
            # Linking is a convenience for the RIS, never a reason not to start: the next
            # order for such a step, or the next start, tries again.
            log.exception("mpps.link_failed", journal_id=None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- N-CREATE / N-SET (called through the bridge) ------------------------------------------
    async def create(self, new: NewProcedureStep) -> ProcedureStep:
        """Commit a checked N-CREATE; raises ``DuplicateProcedureStep`` or a store failure."""
        now = now_iso()

        def decide(candidates: Sequence[StoredWorklistItem]) -> WorklistLink:
            return worklist_link(candidates, new.keys, PpsStatus.IN_PROGRESS, now)

        commit = await self.store.create_procedure_step(new, decide)
        step = commit.step
        self._report(commit, "create")
        self._publish(ProcedureStepStarted, commit)
        return step

    async def set(self, sop_instance_uid: str, modification: Dataset) -> ProcedureStep:
        """Commit an N-SET; raises ``NoSuchProcedureStep``, ``ProcedureStepFinal`` or an
        attribute error (nothing changed then)."""
        now = now_iso()

        def change(step: ProcedureStep) -> StepUpdate:
            return apply_set(step, modification)

        def decide(status: PpsStatus) -> Callable[[Sequence[StoredWorklistItem]], WorklistLink]:
            return lambda items: worklist_link(items, (), status, now)

        commit = await self.store.set_procedure_step(sop_instance_uid, change, decide, now)
        step = commit.step
        self._report(commit, "set")
        if step.status is PpsStatus.COMPLETED and commit.event_id is not None:
            self._publish(ProcedureStepCompleted, commit,
                          expected_instances=step.expected_instances)
            if step.expected_instances:
                self._watch(step, commit.missing)
                log.info("mpps.completeness.waiting", sop_instance_uid=step.sop_instance_uid,
                         expected=step.expected_instances, missing=len(commit.missing),
                         **step_keys(step))
                if not commit.missing:
                    # Every listed instance is already in the journal: complete now, off the
                    # modality's answer path.
                    self._spawn(self._complete(step.id))
        elif step.status is PpsStatus.DISCONTINUED and commit.event_id is not None:
            self._publish(ProcedureStepDiscontinued, commit)
        return step

    def _report(self, commit: ProcedureStepCommit, operation: str) -> None:
        step = commit.step
        log.info(f"mpps.{'created' if operation == 'create' else 'set'}",
                 sop_instance_uid=step.sop_instance_uid, status=step.status.value,
                 calling_ae=step.calling_ae, worklist_item_ids=list(step.worklist_item_ids),
                 worklist_updated=[s.id for s in commit.link.updates],
                 **step_keys(step, commit.link.updates))
        if operation == "create" and step.unscheduled:
            log.warning("mpps.unscheduled", sop_instance_uid=step.sop_instance_uid,
                        calling_ae=step.calling_ae, **step_keys(step))
        for item_id, status in commit.link.refused:
            log.warning("mpps.worklist_conflict", sop_instance_uid=step.sop_instance_uid,
                        worklist_item_id=item_id, worklist_status=status,
                        mpps_status=step.status.value, **step_keys(step))

    def _publish(self, kind: type[ProcedureStepEvent], commit: ProcedureStepCommit,
                 **extra: int) -> None:
        step = commit.step
        assert commit.event_id is not None
        # After the commit: a dropped event is still in procedure_step_events (routed_at NULL).
        self._bus.publish(kind(
            occurred_at=datetime.now(UTC), journal_id=commit.event_id,
            sop_instance_uid=step.sop_instance_uid, study_instance_uid=step.study_instance_uid,
            accession_number=step.accession_number, worklist_item_ids=step.worklist_item_ids,
            unscheduled=step.unscheduled, calling_ae=step.calling_ae, **extra))

    # --- unscheduled steps linked to orders placed later --------------------------------------
    def on_order_received(self, event: OrderReceived) -> None:
        """Bus subscriber (never blocks, never raises): an accepted order may be the one an
        unscheduled step was waiting for."""
        if not event.worklist_item_ids:  # an order that touched no item links nothing
            return
        self._link_pending.update(event.worklist_item_ids)
        if not self._linking:
            self._linking = True
            self._spawn(self._link_orders_received())

    async def _link_orders_received(self) -> None:
        # Each sweep starts after the orders it takes were committed (they are published only
        # then), so a step created meanwhile is either seen by it or links itself on creation.
        try:
            while self._link_pending:
                item_ids, self._link_pending = sorted(self._link_pending), set()
                try:
                    await self.link_late_orders(item_ids)
                except Exception:
                    # The sweep at the next start links it; the step is safe either way.
                    log.exception("mpps.link_failed", worklist_item_ids=item_ids)
        finally:
            self._linking = False

    async def link_late_orders(self, item_ids: Sequence[int] | None) -> int:
        """Link unscheduled steps to these worklist items (all when None); each linked step
        gets a ``link`` event, published like the step's own, so its order status goes to the
        RIS now. The number linked."""
        now = now_iso()

        def decide(status: PpsStatus) -> Callable[[Sequence[StoredWorklistItem]], WorklistLink]:
            return lambda items: worklist_link(items, (), status, now)

        commits = await self.store.link_unscheduled_procedure_steps(item_ids, decide, now)
        for commit in commits:
            step = commit.step
            PROCEDURE_STEPS_LINKED.inc()
            log.info("mpps.linked_late", sop_instance_uid=step.sop_instance_uid,
                     status=step.status.value, **step_keys(step),
                     worklist_item_ids=list(step.worklist_item_ids),
                     worklist_updated=[s.id for s in commit.link.updates])
            kind: type[ProcedureStepEvent] = {
                PpsStatus.COMPLETED: ProcedureStepCompleted,
                PpsStatus.DISCONTINUED: ProcedureStepDiscontinued,
            }.get(step.status, ProcedureStepStarted)
            self._publish(kind, commit)
        return len(commits)

    # --- completeness from evidence ------------------------------------------------------------
    def _watch(self, step: ProcedureStep, missing: Sequence[str]) -> None:
        self._steps[step.id] = step
        self._missing[step.id] = set(missing)
        for uid in missing:
            self._by_sop.setdefault(uid, set()).add(step.id)

    def on_instance_stored(self, event: InstanceStored) -> None:
        """Bus subscriber: never blocks, never raises."""
        step_ids = self._by_sop.pop(event.sop_instance_uid, None)
        if not step_ids:
            return
        for step_id in step_ids:
            missing = self._missing.get(step_id)
            if missing is None:
                continue
            missing.discard(event.sop_instance_uid)
            if not missing:
                self._spawn(self._complete(step_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _complete(self, step_id: int) -> None:
        step = self._steps.pop(step_id, None)
        self._missing.pop(step_id, None)
        if step is None:
            return
        try:
            if not await self.store.mark_procedure_step_complete(step_id, now_iso()):
                return  # marked already (a concurrent path got there first)
            MPPS_STUDIES_COMPLETE.inc()
            fired = 0
            if self.study_complete is not None and step.study_instance_uid:
                fired = await self.study_complete(step.study_instance_uid)
            log.info("mpps.study_complete", sop_instance_uid=step.sop_instance_uid,
                     expected=step.expected_instances, received=step.expected_instances,
                     groups_fired=fired, **step_keys(step))
        except Exception:
            # The quiet-period timer stays as the fallback; the next start retries this step.
            log.exception("mpps.study_complete_failed", sop_instance_uid=step.sop_instance_uid)

    # --- reads (API) ---------------------------------------------------------------------------
    async def get(self, sop_instance_uid: str) -> ProcedureStep | None:
        return await self.store.get_procedure_step(sop_instance_uid)

    async def list(self, status: PpsStatus | None = None, unscheduled: bool | None = None,
                   limit: int = 100, offset: int = 0) -> tuple[int, list[ProcedureStep]]:
        return await self.store.list_procedure_steps(
            status.value if status else None, unscheduled, limit, offset)
