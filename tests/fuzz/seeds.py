"""Seed inputs for the fuzz harnesses, built from the same generators the tests use (so no
binary files live in the repository): well-formed HL7 orders, MLLP streams, datasets in each
transfer syntax, and a whole association's PDUs (A-ASSOCIATE-RQ, a C-STORE in P-DATA-TF,
A-RELEASE-RQ)."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from tests.helpers import dicomgen

_ORDER = (
    "MSH|^~\\&|RIS|HOSP|RADFLOW|HOSP|20261125120000||ORM^O01^ORM_O01|{cid}|P|2.5.1|||AL|NE||"
    "{charset}\rPID|1||PID1^^^HOSP^MR||DOE^JOHN\\S\\X||19700101|M\rPV1|1|O\r"
    "ORC|NW|PL1^RIS|FL-PL1^RADFLOW||SC||^^^20261125120000\r"
    "OBR|1|PL1^RIS|FL-PL1^RADFLOW|CTHEAD^CT Head^LOCAL|||20261125115500|||||||||"
    "||ACC1|RP-PL1|||||CT||||||||||||||20261125120000\r")


def hl7_seeds() -> list[bytes]:
    return [_ORDER.format(cid="MSG0001", charset="").encode(),
            _ORDER.format(cid="M^2&3", charset="UNICODE UTF-8").encode(),
            _ORDER.format(cid="X", charset="8859/1").replace("ORM^O01^ORM_O01",
                                                            "ADT^A01").encode("latin-1"),
            b"MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.3\nPID|1\n"]


def mllp_seeds() -> list[bytes]:
    one = hl7_seeds()[0]
    return [b"\x07" + b"\x0b" + one + b"\x1c\x0d",
            b"\xff" + (b"\x0b" + one + b"\x1c\x0d") * 2,
            b"\x00" + b"\x0b" + one[:50] + b"\x1c" + one[50:] + b"\x1c\x0d",
            b"\x40\r\n\x0b\x1c\x0d"]


def _dataset(directory: Path, syntax: str) -> bytes:
    inst = dicomgen.write_instance(directory, syntax, size=4, name=f"{syntax}.dcm")
    return dicomgen.dataset_bytes(inst.path)


def dataset_seeds(directory: Path) -> list[bytes]:
    explicit = _dataset(directory, ExplicitVRLittleEndian)
    implicit = _dataset(directory, ImplicitVRLittleEndian)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = deflater.compress(explicit) + deflater.flush()
    return [b"\x00" + explicit, b"\x01" + implicit, b"\x02" + deflated]


def pdu_seeds(directory: Path) -> list[bytes]:
    rq = A_ASSOCIATE()
    rq.calling_ae_title, rq.called_ae_title = "SCU", "RADFLOW"
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.presentation_context_definition_list = [build_context(
        "1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    rq.presentation_context_definition_list[0].context_id = 1
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = 16384
    rq.user_information = [max_len]
    associate = A_ASSOCIATE_RQ()
    associate.from_primitive(rq)
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = "1.2.3.4"
    req.DataSet = BytesIO(_dataset(directory, ExplicitVRLittleEndian))
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    pdata = b""
    for primitive in msg.encode_msg(1, 1024):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        pdata += pdu.encode()
    release, abort = A_RELEASE_RQ(), A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0x00, 0x00
    return [associate.encode(), pdata, pdata + release.encode(), abort.encode()]


def admin_seeds() -> list[bytes]:
    return [b"\x00" + b'{"ids": [1, 2, 3]}', b"\x01" + b'{"ids": 20601}', b"\x02{}",
            b"\x81limit=10&offset=0", b"\x83all=true&ids=1", b"\x04" + b"[" * 5000,
            b"\x05" + b'{"limit": 99999999999999999999999}']


SEEDS: dict[str, Callable[[Path], list[bytes]]] = {
    "admin": lambda _: admin_seeds(),
    "hl7": lambda _: hl7_seeds(),
    "mllp": lambda _: mllp_seeds(),
    "dataset": dataset_seeds,
    "pdu": pdu_seeds,
}


def write_corpus(name: str, directory: Path) -> Path:
    """The seeds of harness ``name`` as files in ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS[name](directory.parent)):
        (directory / f"seed{i}").write_bytes(seed)
    return directory
