"""HL7 v2.5.1 ORM^O01 status updates for performed procedure steps, rendered at routing time.

A procedure step event (N-CREATE IN PROGRESS, N-SET COMPLETED / DISCONTINUED) becomes one
ORM^O01 with ORC-1 ``SC`` (status changed) and ORC-5 ``IP`` / ``CM`` / ``DC``, one ORC/OBR
group per linked worklist item (ORC-2/3 and OBR-2/3 the placer/filler order numbers, OBR-18 the
accession number, OBR-19 the requested procedure id, OBR-20 the scheduled procedure step id)
and PID-3/5 from the first item. An unscheduled step (no item) is described from the MPPS
attributes, though routing sends no status for a step without an order (a RIS cannot place
it). PID-5 keeps the whole name: one XPN repetition per PN component group, XPN-8 saying which
(``A`` alphabetic, ``I`` ideographic, ``P`` phonetic) when there is more than one. The text is
meant for the character set of the order it answers (the item's ``source_charset``) or the
destination's ``charset``; MSH-18 declares it (ISO 2022 sets JAHIS-style, ``~ISO IR87``), and
the sender encodes in it, dead-lettering a character it cannot hold rather than writing ``?``.
MSH-5/MSH-6 name the destination's receiving application/facility, by default the order's
MSH-3/MSH-4. Rendering is deterministic: the same event row gives the same bytes on every
replay (MSH-7 is the event's receive time, MSH-10 is derived from the event row id), so a retry
after a crash sends the same message. Every field value is escaped with
:func:`engine.hl7.message.escape`. Pure: no store, no clock, no network.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

from engine.hl7.message import DEFAULT_ENCODING_CHARS, escape, msh18_for_charset
from engine.records.worklist import WorklistItem

MESSAGE_TYPE: Final = "ORM^O01"
#: MPPS status → HL7 table 0038 order status (ORC-5)
ORDER_STATUS: Final[dict[str, str]] = {
    "IN PROGRESS": "IP", "COMPLETED": "CM", "DISCONTINUED": "DC"}

_ENC = DEFAULT_ENCODING_CHARS
#: XPN-8 name representation code (HL7 table 4000) of each DICOM PN component group
_REPRESENTATION: Final = ("A", "I", "P")


@dataclass(frozen=True, slots=True)
class Repeated:
    """A repeating field: each repetition's components (escaped when rendered)."""

    repetitions: tuple[tuple[str, ...], ...]


#: a field: plain text, components (each a text), or repetitions of components
Field = str | Sequence[str] | Repeated


def control_id(event_id: int) -> str:
    """MSH-10 of the status update of ``procedure_step_events.id`` (stable across replays)."""
    return f"RFPS{event_id}"


def hl7_timestamp(iso: str) -> str:
    """An ISO 8601 instant as HL7 DTM in UTC (``YYYYMMDDHHMMSS+0000``); '' if unreadable."""
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def xpn(pn: str) -> list[str]:
    """DICOM PN (family^given^middle^prefix^suffix, first group) → XPN components
    (family^given^middle^suffix^prefix)."""
    return _xpn_group(pn.split("=")[0])


def _xpn_group(group: str) -> list[str]:
    parts = (group.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    out = [family, given, middle, suffix, prefix]
    while out and not out[-1]:
        out.pop()
    return out


def xpn_repetitions(pn: str) -> Repeated:
    """Every component group of a DICOM PN as one XPN repetition each; with more than one
    group, XPN-8 names the representation (A/I/P), so a receiver knows which is which."""
    groups = pn.split("=")[:3]
    present = [(i, g) for i, g in enumerate(groups) if g.strip("^ ")]
    if len(present) <= 1 and (not present or present[0][0] == 0):
        return Repeated((tuple(_xpn_group(groups[0])),))
    reps = []
    for i, group in present:
        comps = (_xpn_group(group) + [""] * 5)[:5]
        reps.append((*comps, "", "", _REPRESENTATION[i]))
    return Repeated(tuple(reps))


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def _dtm(ds: Dataset, date_kw: str, time_kw: str) -> str:
    date = _text(ds, date_kw)
    return date + _text(ds, time_kw) if date else ""


def _field(value: Field) -> str:
    if isinstance(value, str):
        return escape(value, _ENC)
    if isinstance(value, Repeated):
        return _ENC.repetition.join(_field(rep) for rep in value.repetitions)
    comps = list(value)
    while comps and not comps[-1]:
        comps.pop()
    return _ENC.component.join(escape(c, _ENC) for c in comps)


def _segment(name: str, fields: Sequence[Field]) -> str:
    rendered = [_field(f) for f in fields]
    while rendered and not rendered[-1]:
        rendered.pop()
    return _ENC.field.join([name, *rendered])


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A rendered status update: the message text (CR-separated) and its MSH-10."""

    text: str
    control_id: str
    order_status: str


def render_status_update(*, event_id: int, status: str, received_at: str, dataset: Dataset,
                         items: Sequence[WorklistItem], accession_number: str = "",
                         sending_application: str = "RADFLOW",
                         sending_facility: str = "RADFLOW", charset: str = "",
                         receiving_application: str = "", receiving_facility: str = ""
                         ) -> StatusUpdate:
    """The ORM^O01 status update of one procedure step event.

    ``dataset`` is the step's MPPS attributes as of the event, ``items`` its linked worklist
    items (empty: an unscheduled step, described from ``dataset``). ``charset`` and the
    receiving application/facility are the destination's (empty: the order's)."""
    order_status = ORDER_STATUS.get(status)
    if order_status is None:
        raise ValueError(f"no HL7 order status for procedure step status {status!r}")
    when = hl7_timestamp(received_at)
    cid = control_id(event_id)
    first = items[0] if items else None
    receiving_application = receiving_application or (first.source_application if first else "")
    receiving_facility = receiving_facility or (first.source if first else "")
    if first is not None:
        patient_id, issuer, patient_name = (first.patient_id, first.issuer_of_patient_id,
                                            first.patient_name)
    else:
        patient_id, issuer = _text(dataset, "PatientID"), _text(dataset, "IssuerOfPatientID")
        patient_name = _text(dataset, "PatientName")
    start = _dtm(dataset, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
    end = _dtm(dataset, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime") \
        if status != "IN PROGRESS" else ""
    modality = _text(dataset, "Modality")

    orders: list[tuple[str, str, list[str], str, str, str, str]] = []
    for item in items:
        code = item.requested_procedure_code[0] if item.requested_procedure_code else None
        service = ([code.value, code.meaning or item.requested_procedure_description,
                    code.scheme] if code else
                   ["", item.requested_procedure_description])
        orders.append((item.placer_order_number, item.filler_order_number, service,
                       item.accession_number, item.requested_procedure_id,
                       item.scheduled_procedure_step_id, item.modality or modality))
    if not orders:
        description = _text(dataset, "PerformedProcedureStepDescription")
        orders.append(("", "", ["", description], accession_number, "",
                       _text(dataset, "PerformedProcedureStepID"), modality))

    header: list[Field] = [sending_application, sending_facility, receiving_application,
                           receiving_facility, when, "", ["ORM", "O01", "ORM_O01"], cid, "P",
                           "2.5.1"]
    segments = [_segment("PID", ["1", "", [patient_id, "", "", issuer], "",
                                 xpn_repetitions(patient_name)])]
    body: list[str] = []
    for n, (placer, filler, service, accession, rp_id, sps_id, mod) in enumerate(orders, 1):
        body.append(_segment("ORC", ["SC", placer, filler, "", order_status, "", "", "", when]))
        obr: list[Field] = [""] * 24
        obr[0] = str(n)
        obr[1] = placer
        obr[2] = filler
        obr[3] = service
        obr[6] = start
        obr[7] = end
        obr[17] = accession
        obr[18] = rp_id
        obr[19] = sps_id
        obr[23] = mod
        body.append(_segment("OBR", obr))
    rest = segments + body

    def msh(fields: Sequence[Field]) -> str:
        return f"MSH{_ENC.field}{_ENC.msh2}{_ENC.field}" + _ENC.field.join(
            _field(f) for f in fields)

    text = "\r".join([msh(header), *rest]) + "\r"
    if charset or not text.isascii():
        # MSH-13..17 empty, MSH-18: the character set the sender encodes the text in: the
        # destination's, else the order's; for a step without one, 8859/1 when it suffices
        # (what most RIS expect), else UTF-8. MSH-18 is written raw: "~" is its repetition.
        chosen = charset or (first.source_charset if first else "")
        if not chosen or (chosen in ("ASCII", "ISO IR6") and not text.isascii()):
            chosen = "8859/1" if _latin1(text) else "UNICODE UTF-8"
        text = "\r".join([msh([*header, "", "", "", "", ""]) + _ENC.field
                           + msh18_for_charset(chosen), *rest]) + "\r"
    return StatusUpdate(text, cid, order_status)


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
