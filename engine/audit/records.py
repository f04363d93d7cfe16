"""The audit events radflow records, each built as its DICOM audit message (PS3.15 A.5.3).

Pure functions from facts to :class:`~engine.dicom.audit.AuditMessage`; which participants
and objects each event carries follows the PS3.15 table of that event. No I/O, no store: the
trail (``engine.audit.trail``) gathers the facts and queues the messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from engine.dicom import audit as m
from engine.dicom.audit import (
    AuditMessage,
    AuditSource,
    Code,
    Participant,
    ParticipantObject,
)

#: MWL C-FIND's SOP Class (the Query event's participant object)
MWL_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.31"


def radflow_participant(source: AuditSource, ae_title: str | None, host: str | None,
                        role: Code | None, requestor: bool = False) -> Participant:
    """radflow itself: its AE title (or source id) and node."""
    return Participant(user_id=ae_title or source.source_id, requestor=requestor, role=role,
                       network_access_point=host, alternative_user_id=source.source_id)


def peer(ae_title: str, host: str, role: Code | None, requestor: bool = True) -> Participant:
    """A DICOM or HL7 peer, named by its AE title (or application) and address."""
    return Participant(user_id=ae_title or host or "unknown", requestor=requestor, role=role,
                       network_access_point=host or None)


def patient(patient_id: str, name: str | None = None) -> ParticipantObject:
    return ParticipantObject(patient_id, "1", "1", m.PATIENT_NUMBER, name=name)


def study(study_uid: str, sop_classes: Mapping[str, int] | None = None,
          accession: str | None = None) -> ParticipantObject:
    details = (("Accession Number", accession),) if accession else ()
    return ParticipantObject(study_uid, "2", "3", m.STUDY_INSTANCE_UID, details=details,
                             sop_classes=tuple(sorted((sop_classes or {}).items())))


def application_activity(source: AuditSource, time: datetime, started: bool, node: str,
                         user: str) -> AuditMessage:
    """Application Activity: radflow started or stopped (A.5.3.1)."""
    return AuditMessage(
        m.APPLICATION_ACTIVITY, "E", m.SUCCESS, time,
        [radflow_participant(source, None, node, m.APPLICATION_ROLE),
         Participant(user_id=user, requestor=True, role=m.APPLICATION_LAUNCHER)],
        event_types=[m.APPLICATION_START if started else m.APPLICATION_STOP],
        source=source)


def association(source: AuditSource, time: datetime, *, calling_ae: str, called_ae: str,
                peer_host: str, node: str, accepted: bool, reason: str = "",
                user_identity: str | None = None) -> AuditMessage:
    """User Authentication (A.5.3.12): an association (and its user identity, if it presented
    one) accepted or refused. Refusals are also Security Alerts (:func:`security_alert`)."""
    who = Participant(user_id=user_identity or calling_ae or peer_host, requestor=True,
                      network_access_point=peer_host or None,
                      alternative_user_id=calling_ae if user_identity else None)
    return AuditMessage(
        m.USER_AUTHENTICATION, "E", m.SUCCESS if accepted else m.MINOR_FAILURE, time,
        [who, radflow_participant(source, called_ae, node, None)],
        event_types=[m.LOGIN], outcome_description=reason or None, source=source)


def security_alert(source: AuditSource, time: datetime, kind: Code, *, description: str,
                   who: Participant, node: str, subject: str | None = None,
                   failure: bool = True) -> AuditMessage:
    """Security Alert (A.5.3.11): a refused association, a TLS failure, a refused login, a
    configuration change. ``subject`` names what was affected (a listener, a file, an API
    path)."""
    objects = [ParticipantObject(subject, "2", "13", m.URI, description=description)
               ] if subject else []
    return AuditMessage(
        m.SECURITY_ALERT, "E", m.MINOR_FAILURE if failure else m.SUCCESS, time,
        [who, radflow_participant(source, None, node, None)], objects,
        event_types=[kind], outcome_description=description, source=source)


def instances_received(source: AuditSource, time: datetime, *, calling_ae: str,
                       called_ae: str, peer_host: str, node: str, study_uid: str,
                       sop_classes: Mapping[str, int], patient_id: str | None
                       ) -> AuditMessage:
    """DICOM Instances Transferred (A.5.3.5), action C: a peer stored a study's instances."""
    objects = [study(study_uid, sop_classes)]
    if patient_id:
        objects.append(patient(patient_id))
    return AuditMessage(
        m.INSTANCES_TRANSFERRED, "C", m.SUCCESS, time,
        [peer(calling_ae, peer_host, m.SOURCE_ROLE),
         radflow_participant(source, called_ae, node, m.DESTINATION_ROLE, requestor=False)],
        objects, source=source)


def instances_sent(source: AuditSource, time: datetime, *, export: bool, destination: str,
                   address: str, local_ae: str | None, node: str, study_uid: str,
                   sop_classes: Mapping[str, int], patient_id: str | None, outcome: str
                   ) -> AuditMessage:
    """DICOM Instances Transferred (action R) to an archive, or Export (A.5.3.6) to a node
    that is not one (an AI node, a DICOMweb endpoint): one delivery's instances of a study."""
    objects = [study(study_uid, sop_classes)]
    if patient_id:
        objects.append(patient(patient_id))
    to = Participant(user_id=destination, requestor=False,
                     role=m.DESTINATION_MEDIA if export else m.DESTINATION_ROLE,
                     network_access_point=address or None)
    return AuditMessage(
        m.EXPORT if export else m.INSTANCES_TRANSFERRED, "R", outcome, time,
        [radflow_participant(source, local_ae, node, m.SOURCE_ROLE, requestor=True), to],
        objects, source=source)


def retrieve(source: AuditSource, time: datetime, *, begin: bool, move: bool,
             calling_ae: str, called_ae: str, peer_host: str, node: str,
             destination_ae: str, destination_host: str, study_uid: str,
             sop_classes: Mapping[str, int], patient_id: str | None, outcome: str = m.SUCCESS,
             outcome_description: str | None = None) -> AuditMessage:
    """A C-MOVE or C-GET radflow answered, for one study: Begin Transferring DICOM Instances
    (A.5.3.4, action E) when its sub-operations start, DICOM Instances Transferred (A.5.3.5,
    action R: radflow read and sent copies it keeps) when they ended. radflow is the source;
    the destination is the Move Destination (C-MOVE) or the requestor itself (C-GET); a Move
    SCU that is not the destination takes part as the requestor."""
    objects = [study(study_uid, sop_classes)]
    if patient_id:
        objects.append(patient(patient_id))
    participants = [
        radflow_participant(source, called_ae, node, m.SOURCE_ROLE, requestor=False),
        peer(destination_ae, destination_host, m.DESTINATION_ROLE, requestor=not move)]
    if move:
        participants.append(peer(calling_ae, peer_host, None, requestor=True))
    return AuditMessage(
        m.BEGIN_TRANSFERRING if begin else m.INSTANCES_TRANSFERRED, "E" if begin else "R",
        outcome, time, participants, objects, outcome_description=outcome_description,
        source=source)


def order_record(source: AuditSource, time: datetime, *, action: str, sending_application: str,
                 peer_host: str, node: str, patient_id: str | None, accession: str | None,
                 message_type: str, control_id: str, outcome: str = m.SUCCESS
                 ) -> AuditMessage:
    """Order Record (A.5.3.9): an HL7 order created (C), changed (U) or cancelled (D)."""
    objects = []
    if patient_id:
        objects.append(patient(patient_id))
    details = [("MSH-9", message_type), ("MSH-10", control_id)]
    if accession:
        details.append(("Accession Number", accession))
    objects.append(ParticipantObject(accession or control_id, "2", "3", m.URI,
                                     details=details, description="HL7 order"))
    return AuditMessage(
        m.ORDER_RECORD, action, outcome, time,
        [peer(sending_application, peer_host, m.SOURCE_ROLE),
         radflow_participant(source, None, node, m.DESTINATION_ROLE)],
        objects, source=source)


def procedure_record(source: AuditSource, time: datetime, *, action: str, calling_ae: str,
                     node: str, study_uid: str, accession: str | None,
                     patient_id: str | None, step_uid: str, status: str) -> AuditMessage:
    """Procedure Record (A.5.3.10): an MPPS step created (C) or updated (U)."""
    objects = [ParticipantObject(study_uid, "2", "3", m.STUDY_INSTANCE_UID,
                                 details=[("Performed Procedure Step SOP Instance UID",
                                           step_uid), ("Status", status)]
                                 + ([("Accession Number", accession)] if accession else []))]
    if patient_id:
        objects.append(patient(patient_id))
    return AuditMessage(
        m.PROCEDURE_RECORD, action, m.SUCCESS, time,
        [peer(calling_ae, "", m.SOURCE_ROLE),
         radflow_participant(source, None, node, m.DESTINATION_ROLE)],
        objects, source=source)


def query(source: AuditSource, time: datetime, *, calling_ae: str, called_ae: str,
          peer_host: str, node: str, sop_class_uid: str, identifier: bytes,
          transfer_syntax_uid: str, outcome: str = m.SUCCESS) -> AuditMessage:
    """Query (A.5.3.13): a Modality Worklist C-FIND, the identifier as it came (base64)."""
    return AuditMessage(
        m.QUERY, "E", outcome, time,
        [peer(calling_ae, peer_host, m.SOURCE_ROLE),
         radflow_participant(source, called_ae, node, m.DESTINATION_ROLE)],
        [ParticipantObject(sop_class_uid, "2", "3", m.SOP_CLASS_UID, query=identifier,
                           details=[("TransferSyntax", transfer_syntax_uid)])],
        source=source)


def api_change(source: AuditSource, time: datetime, *, user: str, peer_host: str, node: str,
               method: str, path: str, status: int, detail: Sequence[tuple[str, str]] = ()
               ) -> AuditMessage:
    """A change made through the admin API or console: a Security Alert of type Software
    Configuration naming who (the authenticated user, else the token) did what."""
    ok = status < 400
    obj = ParticipantObject(path, "2", "13", m.URI,
                            details=[("HTTP", f"{method} {path} -> {status}"), *detail],
                            description=f"{method} {path}")
    return AuditMessage(
        m.SECURITY_ALERT, "E", m.SUCCESS if ok else m.MINOR_FAILURE, time,
        [Participant(user_id=user, requestor=True, network_access_point=peer_host or None),
         radflow_participant(source, None, node, None)], [obj],
        event_types=[m.SOFTWARE_CONFIGURATION],
        outcome_description=f"{method} {path} answered {status}", source=source)
