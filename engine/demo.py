"""``radflow demo``: a whole flow on loopback that a newcomer can watch, then a summary.

It builds a throw-away site in a temporary folder (SQLite, spool, routes, free ports), starts a
radflow engine in this process and two destinations beside it - a "PACS" (DCMTK ``storescp`` when
installed, else a pynetdicom storage SCP) and an "AI node" (a pynetdicom SCP that keeps what it
receives) - and walks through: an HL7 order over MLLP, a Modality Worklist C-FIND, MPPS
IN PROGRESS (when this build has an MPPS SCP), a small CT study stored by C-STORE, MPPS
COMPLETED, routing (to the PACS as is, to the AI node de-identified by a morph) and delivery.
Every step says what happened; a missing part (no MPPS, no routing) is reported and skipped,
never fatal. It is a demonstration: it must not touch the site's own config or ``var/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STORESCP = "/usr/bin/storescp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _say(step: str, text: str) -> None:
    print(f"  {step:<10} {text}", flush=True)


@dataclass
class _Received:
    datasets: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _pynetdicom_scp(ae_title: str, port: int, sink: _Received) -> Any:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    def on_store(event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with sink.lock:
            sink.datasets.append(ds)
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    return ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def _order(accession: str, patient_id: str, when: str) -> bytes:
    obr = ["OBR", "1", f"ORD{accession}", f"FIL{accession}", "CTCHEST^CT Chest^L", "", "", "",
           "", "", "", "", "", "", "", "", "1234^Smith^Anna^^^Dr", "", accession,
           f"RP{accession}", f"SPS{accession}", "", "", "", "CT", "", "", f"^^^{when}"]
    segments = [
        f"MSH|^~\\&|RIS|HOSP|RADFLOW|RAD|{when}||ORM^O01^ORM_O01|DEMO{accession}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||DEMO^PATIENT||19700101|O", "PV1|1|O|RAD^^^HOSP",
        f"ORC|NW|ORD{accession}|FIL{accession}||||^^^{when}", "|".join(obr)]
    return ("\r".join(segments) + "\r").encode("ascii")


def _config(base: Path, ports: dict[str, int], pacs_ae: str) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    routes = base / "routes"
    (routes / "worklist").mkdir(parents=True)
    shutil.copy(repo / "routes" / "worklist" / "hl7-mwl.yaml", routes / "worklist")
    (routes / "10-demo.yaml").write_text(
        "# The demo's routes: every image to the PACS as it is; CT also to the AI node,\n"
        "# de-identified on the way out (the spooled original is never changed).\n"
        "version: 1\nroutes:\n"
        "  - name: images-to-pacs\n    destinations: [pacs]\n"
        "  - name: ct-to-ai\n    match: {attr: Modality, equals: CT}\n"
        "    destinations: [ai-node]\n    morph:\n"
        "      - {op: set, attr: PatientName, value: ANONYMOUS}\n"
        "      - {op: set, attr: PatientID, value: DEMO-ANON}\n")
    retry = {"initial_delay": 0.5, "max_delay": 5, "circuit_failures": 5,
             "circuit_cooldown": 2}
    return {
        "site": {"name": "radflow demo"},
        "storage": {"sqlite_path": str(base / "radflow.db"), "spool_dir": str(base / "spool"),
                    "min_free_mb": 1},
        "dicom": {"listeners": [{
            "ae_title": "RADFLOW", "host": HOST, "port": ports["dicom"],
            # The demo's own modality AEs, and DCMTK's default calling AE titles for trying
            # storescu / echoscu / findscu against it from this machine.
            "allowed_calling": [{"ae_title": ae, "host": HOST} for ae in
                                ("DEMO_CT", "CT_1", "STORESCU", "ECHOSCU", "FINDSCU")]}]},
        "hl7": {"listeners": [{"host": HOST, "port": ports["mllp"]}],
                "allowed_sources": [HOST]},
        "http": {"host": HOST, "port": ports["http"]},
        "worklist": {"mapping_file": str(routes / "worklist" / "hl7-mwl.yaml")},
        "routing": {"routes_dir": str(routes), "reload_poll_seconds": 0},
        "destinations": {
            "pacs": {"type": "dimse", "ae_title": pacs_ae, "host": HOST,
                     "port": ports["pacs"], "concurrency": 1, "retry": retry},
            "ai-node": {"type": "dimse", "ae_title": "AI_NODE", "host": HOST,
                        "port": ports["ai"], "concurrency": 1, "retry": retry}},
        "delivery": {"poll_interval": 0.1, "stats_interval": 0.5},
        "logging": {"level": "info", "format": "console"},
        "engine": {"shutdown_grace": 5},
    }


def run_demo(keep: bool = False, verbose: bool = False) -> int:
    """Run the demo; 0 when every instance reached both destinations."""
    base = Path(tempfile.mkdtemp(prefix="radflow-demo-"))
    try:
        return asyncio.run(_demo(base, verbose))
    finally:
        if keep:
            print(f"\n(demo folder kept: {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


async def _demo(base: Path, verbose: bool) -> int:
    import yaml

    from engine.observability.logging import configure_logging
    from engine.settings import load_settings

    ports = {k: _free_port() for k in ("dicom", "mllp", "http", "pacs", "ai")}
    print(f"radflow demo in {base}\n")
    # --- the destinations ---
    pacs_proc: subprocess.Popen[bytes] | None = None
    pacs_seen = _Received()
    pacs_dir = base / "pacs"
    pacs_dir.mkdir()
    if os.access(STORESCP, os.X_OK):
        pacs_ae = "PACS"
        pacs_proc = subprocess.Popen(
            [STORESCP, "-aet", pacs_ae, "-od", str(pacs_dir), "-uf", str(ports["pacs"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env=dict(os.environ, TCP_NODELAY="1"), start_new_session=True)
        pacs_server = None
        _say("PACS", f"DCMTK storescp as AE {pacs_ae} on port {ports['pacs']}")
    else:
        pacs_ae = "PACS"
        pacs_server = _pynetdicom_scp(pacs_ae, ports["pacs"], pacs_seen)
        _say("PACS", f"a pynetdicom storage SCP as AE {pacs_ae} on port {ports['pacs']}")
    ai_seen = _Received()
    ai_server = _pynetdicom_scp("AI_NODE", ports["ai"], ai_seen)
    _say("AI node", f"a pynetdicom storage SCP as AE AI_NODE on port {ports['ai']}")

    config_path = base / "radflow.yaml"
    config_path.write_text(yaml.safe_dump(_config(base, ports, pacs_ae), sort_keys=False))
    settings = load_settings(config_path, environ={})
    configure_logging("info" if verbose else "error", "console")
    from engine.app import Engine

    engine = Engine(settings)
    await engine.start()
    _say("radflow", f"DICOM RADFLOW@{HOST}:{ports['dicom']}, MLLP :{ports['mllp']}, "
                    f"admin http://{HOST}:{ports['http']}/api/v1/queues")
    ok = False
    try:
        ok = await _walk(engine, ports, pacs_dir, pacs_seen, ai_seen, pacs_proc is not None)
    finally:
        await engine.stop()
        if pacs_proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pacs_proc.pid, signal.SIGTERM)
            pacs_proc.wait(10)
        if pacs_server is not None:
            pacs_server.shutdown()
        ai_server.shutdown()
    print("\nresult:", "every instance reached the PACS and the AI node" if ok
          else "something did not arrive (see above)")
    return 0 if ok else 1


async def _walk(engine: Any, ports: dict[str, int], pacs_dir: Path, pacs_seen: _Received,
                ai_seen: _Received, storescp: bool) -> bool:
    from engine.hl7.message import Hl7Message
    from engine.hl7.mllp import frame, read_messages

    when = time.strftime("%Y%m%d%H%M%S")
    accession, patient_id = f"A{int(time.time()) % 100000:05d}", "DEMO-0001"
    print("\n1. an order arrives from the RIS")
    reader, writer = await asyncio.open_connection(HOST, ports["mllp"])
    writer.write(frame(_order(accession, patient_id, when)))
    await writer.drain()
    async for payload in read_messages(reader, max_message_bytes=65536, idle_timeout=10):
        ack = Hl7Message.parse(payload)
        msa = ack.segment("MSA")
        _say("MLLP", f"ORM^O01 accession {accession} -> ACK {msa.component(1) if msa else '?'}")
        break
    writer.close()

    print("\n2. the scanner asks the worklist")
    found, study_uid = await asyncio.to_thread(_find, ports["dicom"], accession)
    _say("C-FIND", f"{len(found)} scheduled step(s) for accession {accession}"
         + (f": {found[0]}" if found else ""))

    print("\n3. the scanner starts the procedure (MPPS)")
    step = {"accession": accession, "patient_id": patient_id, "study_uid": study_uid}
    mpps_uid, mpps = await asyncio.to_thread(_mpps, ports["dicom"], "create", None, step)
    _say("MPPS", mpps)

    print("\n4. a small CT study is stored")
    study = _study(accession, patient_id, 6, study_uid)
    statuses = await asyncio.to_thread(_store, ports["dicom"], study)
    _say("C-STORE", f"{len(study)} instances, statuses: "
         + ", ".join(f"0x{s:04X}" for s in sorted(set(statuses))))

    print("\n5. the scanner completes the procedure (MPPS)")
    step["series_uid"] = str(study[0].SeriesInstanceUID)
    step["images"] = ",".join(f"{ds.SOPClassUID}/{ds.SOPInstanceUID}" for ds in study)
    _uid, mpps = await asyncio.to_thread(_mpps, ports["dicom"], "set", mpps_uid, step)
    _say("MPPS", mpps)

    print("\n6. routing and delivery")
    uids = {str(ds.SOPInstanceUID) for ds in study}
    await asyncio.sleep(1.0)
    rows = await engine.store.outbox_rows()
    if not rows:
        _say("routing", "no outbox rows yet: routing is not available, enqueueing directly")
        await _enqueue_directly(engine)
    deadline = time.monotonic() + 30

    def pacs_uids() -> set[str]:
        if storescp:
            return {p.name.split(".", 1)[1] for p in pacs_dir.iterdir() if "." in p.name}
        with pacs_seen.lock:
            return {str(d.SOPInstanceUID) for d in pacs_seen.datasets}

    while time.monotonic() < deadline:
        with ai_seen.lock:
            ai_count = len(ai_seen.datasets)
        if uids <= pacs_uids() and ai_count >= len(uids):
            break
        await asyncio.sleep(0.2)
    queues = {q["destination"]: q for q in await _queues(engine)}
    for name in ("pacs", "ai-node"):
        q = queues.get(name, {})
        _say(name, f"pending {q.get('pending')}, dead letters {q.get('dead')}")
    with ai_seen.lock:
        ai = list(ai_seen.datasets)
    _say("PACS", f"received {len(uids & pacs_uids())} of {len(uids)} instances, unchanged")
    names = sorted({str(d.get("PatientName", "")) for d in ai})
    _say("AI node", f"received {len(ai)} instances; PatientName there: {', '.join(names)} "
                    f"(original: DEMO^PATIENT)")

    print("\nsummary")
    print(f"  order {accession} -> worklist ({len(found)} step) -> {len(study)} images -> "
          f"PACS {len(uids & pacs_uids())}/{len(uids)}, AI node {len(ai)}/{len(uids)}")
    return uids <= pacs_uids() and len(ai) >= len(uids)


async def _queues(engine: Any) -> list[dict[str, Any]]:
    from engine.egress.queues import QueueAdmin

    return await QueueAdmin(engine.store, engine.settings.destinations,
                            engine.dispatcher).overview()


async def _enqueue_directly(engine: Any) -> None:
    """Without a router: one row per instance and destination, as routing would write."""
    from engine.durable.store import NewOutboxRow

    morph = [{"op": "set", "attr": "PatientName", "value": "ANONYMOUS"}]
    rows = []
    for inst in await engine.store.list_instances(1000):
        rec = inst.record
        obj = {"spool_path": rec.spool_path, "sop_class_uid": rec.sop_class_uid,
               "sop_instance_uid": rec.sop_instance_uid,
               "transfer_syntax_uid": rec.transfer_syntax_uid, "size_bytes": rec.size_bytes}
        for dest, steps in (("pacs", []), ("ai-node", morph)):
            rows.append(NewOutboxRow(dest, "dicom", json.dumps(
                {"v": 1, "kind": "dicom", "object": obj, "morph": steps}),
                source_id=inst.id, route="demo", study_instance_uid=rec.study_instance_uid))
    await engine.store.enqueue_outbox(rows, time.time())
    engine.dispatcher.wake()


def _study(accession: str, patient_id: str, count: int, study_uid: str = "") -> list[Any]:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series = study_uid or generate_uid(), generate_uid()
    out = []
    for n in range(1, count + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "DEMO^PATIENT", patient_id, accession
        ds.Modality, ds.InstanceNumber, ds.StudyDate = "CT", n, time.strftime("%Y%m%d")
        ds.StudyDescription = "CT Chest"
        ds.Rows = ds.Columns = 32
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (np.arange(32 * 32, dtype=np.uint16) * n % 4096).tobytes()
        out.append(ds)
    return out


def _find(port: int, accession: str) -> tuple[list[str], str]:
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    from engine.reactor import EventDrivenAE

    ae = EventDrivenAE(ae_title="DEMO_CT")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate(HOST, port, ae_title="RADFLOW")
    if not assoc.is_established:
        return [], ""
    query = Dataset()
    query.AccessionNumber = accession
    query.PatientName = ""
    query.StudyInstanceUID = ""
    sps = Dataset()
    sps.Modality = ""
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledStationAETitle = ""
    query.ScheduledProcedureStepSequence = [sps]
    found = []
    study_uid = ""
    for status, ident in assoc.send_c_find(query, ModalityWorklistInformationFind):
        if status is not None and status.Status in (0xFF00, 0xFF01) and ident is not None:
            step = ident.ScheduledProcedureStepSequence[0]
            found.append(f"{ident.PatientName} {step.Modality} on "
                         f"{step.ScheduledProcedureStepStartDate}")
            study_uid = study_uid or str(ident.get("StudyInstanceUID", ""))
    assoc.release()
    return found, study_uid


def _mpps(port: int, operation: str, uid: str | None, step: dict[str, str]
          ) -> tuple[str | None, str]:
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

    from engine.reactor import EventDrivenAE

    if operation == "set" and uid is None:
        return None, "skipped (no MPPS step was created)"
    ae = EventDrivenAE(ae_title="DEMO_CT")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate(HOST, port, ae_title="RADFLOW")
    if not assoc.is_established:
        return None, "not available (association refused)"
    try:
        if not assoc.accepted_contexts:
            return None, "not available in this build (MPPS context not accepted)"
        ds = Dataset()
        now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
        if operation == "create":
            uid = generate_uid()
            item = Dataset()  # PS3.4 Table F.7.2-1: the scheduled step this one performs
            item.StudyInstanceUID = step["study_uid"] or generate_uid()
            item.AccessionNumber = step["accession"]
            item.RequestedProcedureID = f"RP{step['accession']}"
            item.ScheduledProcedureStepID = f"SPS{step['accession']}"
            ds.ScheduledStepAttributesSequence = [item]
            ds.PatientName, ds.PatientID = "DEMO^PATIENT", step["patient_id"]
            ds.PerformedProcedureStepID = "DEMO1"
            ds.PerformedStationAETitle = "DEMO_CT"
            ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = \
                now_date, now_time
            ds.PerformedProcedureStepStatus = "IN PROGRESS"
            ds.Modality = "CT"
            ds.PerformedSeriesSequence = []
            status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
        else:
            assert uid is not None
            ds.PerformedProcedureStepStatus = "COMPLETED"
            ds.PerformedProcedureStepEndDate, ds.PerformedProcedureStepEndTime = \
                now_date, now_time
            series = Dataset()  # what the step produced (final state, Table F.7.2-1)
            series.SeriesInstanceUID = step["series_uid"]
            series.PerformingPhysicianName = ""
            series.OperatorsName = ""
            series.ProtocolName = "CT Chest"
            series.SeriesDescription = "Axial"
            series.RetrieveAETitle = ""
            refs = []
            for pair in step["images"].split(","):
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = pair.split("/")
                refs.append(ref)
            series.ReferencedImageSequence = refs
            series.ReferencedNonImageCompositeSOPInstanceSequence = []
            ds.PerformedSeriesSequence = [series]
            status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
        code = getattr(status, "Status", None)
        return uid, (f"N-{operation.upper()} -> 0x{code:04X}" if code is not None
                     else f"N-{operation.upper()}: no answer")
    finally:
        assoc.release()


def _store(port: int, study: list[Any]) -> list[int]:
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from engine.reactor import EventDrivenAE

    ae = EventDrivenAE(ae_title="CT_1")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(HOST, port, ae_title="RADFLOW")
    if not assoc.is_established:
        return [0xFFFF] * len(study)
    out = []
    for ds in study:
        status = assoc.send_c_store(ds)
        out.append(int(getattr(status, "Status", 0xFFFF)))
    assoc.release()
    return out
