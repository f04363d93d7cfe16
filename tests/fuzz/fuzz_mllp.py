"""Fuzz harness: radflow's MLLP framer (``read_messages``) fed the input in pieces.

The first byte picks the size of the pieces (so one-byte writes and large reads both occur)
and the frame-size limit. Expected: the framer's own errors (unframed data, oversize,
truncated frame). Everything else is a crash. Every payload it yields must be whole: no start
block and no end block (0x1C 0x0D) inside, within the limit. A lone 0x1C may pass through (it
ends no frame); what the HL7 layer then does with it is the HL7 harness's business.
"""

from __future__ import annotations

import asyncio

from tests.fuzz._common import fuzz, instrumented

with instrumented():
    from engine.hl7.mllp import MllpFramingError, read_messages

_LOOP = asyncio.new_event_loop()


async def _read(data: bytes, piece: int, limit: int) -> list[bytes]:
    reader = asyncio.StreamReader(limit=1 << 20)
    for i in range(0, len(data), piece):
        reader.feed_data(data[i:i + piece])
    reader.feed_eof()
    return [p async for p in read_messages(reader, max_message_bytes=limit, idle_timeout=None)]


def one_input(data: bytes) -> None:
    if not data:
        return
    piece = 1 + data[0] % 64
    limit = 16 + (data[0] >> 2) * 16
    body = data[1:]
    try:
        payloads = _LOOP.run_until_complete(_read(body, piece, limit))
    except MllpFramingError:
        return
    for payload in payloads:
        assert b"\x0b" not in payload and b"\x1c\x0d" not in payload, payload[:40]
        assert len(payload) <= limit, (len(payload), limit)


if __name__ == "__main__":
    fuzz(one_input)
