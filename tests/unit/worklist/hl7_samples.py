"""HL7 v2 messages for the worklist unit tests: an ORM^O01 / ADT builder with RIS-style fields."""

from __future__ import annotations

from pathlib import Path

from engine.hl7.message import Hl7Message

REPO = Path(__file__).resolve().parents[3]
MAPPING_FILE = REPO / "routes" / "worklist" / "hl7-mwl.yaml"

_CODECS = {"": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8", "ISO IR87": "iso2022_jp"}


def orm(control_id: str = "MSG1", *, control: str = "NW", placer: str = "ORD1",
        filler: str = "FIL1", patient_id: str = "PAT1", name: str = "DOE^JOHN",
        birth: str = "19700101", sex: str = "M", charset: str = "",
        when: str = "20261125083000", accession: str = "ACC1", procedure: str = "CTHEAD",
        section: str = "CT", order_status: str = "", zds: str = "",
        msg_type: str = "ORM^O01^ORM_O01", facility: str = "HOSP",
        extra: str = "") -> bytes:
    """An ORM^O01 (NW by default) with the usual RIS fields filled, encoded per ``charset``."""
    obr = ["OBR", "1", placer, filler, f"{procedure}^CT Head w/o contrast^L", "", "", "", "", "",
           "", "", "", "", "", "", "1234^Smith^Anna^^^Dr", "", accession, f"RP{accession}",
           f"SPS{accession}", "", "", "", section, "", "", f"^^^{when}"]
    segments = [
        f"MSH|^~\\&|RIS|{facility}|RADFLOW|RAD|20261125120000||{msg_type}|{control_id}|P|2.5.1"
        f"||||||{charset}",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||{birth}|{sex}",
        "PV1|1|O|RAD^^^HOSP",
        f"ORC|{control}|{placer}|{filler}||{order_status}||^^^{when}",
        "|".join(obr),
    ]
    if zds:
        segments.append(f"ZDS|{zds}^RADFLOW^Application^DICOM")
    if extra:
        segments.append(extra)
    return ("\r".join(segments) + "\r").encode(_CODECS[charset])


def adt(control_id: str, event: str, *, patient_id: str = "PAT1", name: str = "DOE^JOHN",
        birth: str = "19700101", sex: str = "M", prior: str = "", charset: str = "") -> bytes:
    segments = [
        f"MSH|^~\\&|ADT|HOSP|RADFLOW|RAD|20261125120000||ADT^{event}^ADT_A01|{control_id}|P|"
        f"2.5.1||||||{charset}",
        f"EVN|{event}|20261125120000",
        f"PID|1||{patient_id}^^^HOSP^MR||{name}||{birth}|{sex}",
        "PV1|1|O",
    ]
    if prior:
        segments.append(f"MRG|{prior}^^^HOSP^MR")
    return ("\r".join(segments) + "\r").encode(_CODECS[charset])


def parse(data: bytes) -> Hl7Message:
    return Hl7Message.parse(data)
