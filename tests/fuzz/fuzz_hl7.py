"""Fuzz harness: radflow's HL7 v2 parser, the ACK built for what it parsed, and the worklist
mapping that turns an order into worklist changes.

Expected: :class:`~engine.errors.RadflowError` (a parse or content error is an ``AR``/``AE``
with a reason). Everything else is a crash. For every message that parses, the ACK radflow
would send must itself parse, echo MSH-10 in MSA-2, and be frameable for MLLP.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from tests.fuzz._common import fuzz, instrumented

with instrumented():
    from engine.errors import RadflowError
    from engine.hl7.ack import AckError, Hl7ErrorCode, build_ack
    from engine.hl7.message import Hl7Message
    from engine.hl7.mllp import frame
    from engine.worklist.mapping import load_mapping

_MAPPING = load_mapping(Path(__file__).resolve().parents[2] / "routes/worklist/hl7-mwl.yaml")
_NOW = datetime(2026, 12, 4, tzinfo=UTC)


def one_input(data: bytes) -> None:
    try:
        msg = Hl7Message.parse(data)
    except RadflowError:
        return
    for code, errors in (("AA", ()), ("AE", (AckError(
            segment="PID", field=3, code=Hl7ErrorCode.REQUIRED_FIELD_MISSING,
            text="PID-3 is required"),))):
        ack = build_ack(msg, code, errors=errors, sending_application="RADFLOW",
                        sending_facility="HOSP", now=_NOW)
        frame(ack)
        # A receiver reads the ACK with the charset its MSH-18 names, as the original's did.
        parsed = Hl7Message.parse(ack)
        msa = parsed.segment("MSA")
        assert msa is not None, "ACK without MSA"
        assert msa.component(2) == msg.control_id, (msa.component(2), msg.control_id)
    with contextlib.suppress(RadflowError):
        _MAPPING.plan(msg)


if __name__ == "__main__":
    fuzz(one_input)
