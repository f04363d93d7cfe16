"""MLLP framing: turning a TCP byte stream into HL7 message payloads and back.

This module owns the Minimal Lower Layer Protocol envelope (start block 0x0B, payload, end
block 0x1C 0x0D): reading every frame a connection carries, bounding each frame's size while it
arrives, and refusing anything that is not framed. It must not parse HL7, answer ACKs, log,
or own the connection (the listener or the sender opens, times and closes it): a framing error
is raised and the caller closes the connection, so nothing half-read is ever handed on.

Written by hand because hl7apy's MLLP server handles one message per connection, and because
``StreamReader.readuntil`` is bounded by the reader's own ``limit`` (64 KiB by default), which the
listener, not this module, chooses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Final

from engine.errors import InvalidInput, RadflowError

__all__ = [
    "END_BLOCK",
    "START_BLOCK",
    "MllpFramingError",
    "MllpIdleTimeout",
    "MllpMessageTooLarge",
    "MllpTruncatedFrame",
    "MllpUnframedData",
    "frame",
    "read_messages",
]

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c\x0d"
_START: Final = 0x0B
# Peers commonly put CR/LF (or spaces) between frames; that is tolerated, anything else is not.
_BETWEEN_FRAMES: Final = frozenset(b" \t\r\n")
_READ_CHUNK: Final = 64 * 1024


class MllpFramingError(InvalidInput):
    """The byte stream does not follow MLLP; the connection must be closed."""

    reason = "mllp_framing"


class MllpUnframedData(MllpFramingError):
    """Bytes other than whitespace outside a frame, or a start block inside one."""

    reason = "mllp_unframed"

    def __init__(self, detail: str, preview: bytes) -> None:
        # A short hex preview helps find the misconfigured peer without logging message content.
        super().__init__(f"{detail} (first bytes: {preview[:8].hex(' ')})")
        self.preview = preview[:8]


class MllpMessageTooLarge(MllpFramingError):
    """A frame grew past ``max_message_bytes`` before its end block arrived."""

    reason = "mllp_too_large"

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(f"MLLP frame exceeds {limit} bytes (at least {received} received)")
        self.limit = limit
        self.received = received


class MllpTruncatedFrame(MllpFramingError):
    """The peer closed the connection inside a frame."""

    reason = "mllp_truncated"

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed inside an MLLP frame after {received} payload bytes")
        self.received = received


class MllpIdleTimeout(RadflowError, TimeoutError):
    """Nothing arrived for ``idle_timeout`` seconds; ``mid_frame`` if a frame was half read."""

    reason = "mllp_idle_timeout"

    def __init__(self, timeout: float, *, mid_frame: bool) -> None:
        where = "inside a frame" if mid_frame else "between frames"
        super().__init__(f"no data for {timeout} s {where}")
        self.timeout = timeout
        self.mid_frame = mid_frame


def frame(payload: bytes) -> bytes:
    """Wrap one payload in MLLP blocks; ``ValueError`` if it holds a block character."""
    if START_BLOCK in payload or b"\x1c" in payload:
        # Such a payload would be cut or merged by the receiver; it is a bug upstream.
        raise ValueError("an MLLP payload must not contain 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK


async def read_messages(
    reader: asyncio.StreamReader,
    *,
    max_message_bytes: int,
    idle_timeout: float | None,
) -> AsyncGenerator[bytes, None]:
    """Yield each frame's payload from ``reader`` until a clean EOF between frames.

    Raises :class:`MllpUnframedData`, :class:`MllpMessageTooLarge` (detected while reading:
    at most ``max_message_bytes + 2`` bytes of one frame are ever held),
    :class:`MllpTruncatedFrame` at EOF inside a frame, and :class:`MllpIdleTimeout` when no
    byte arrives for ``idle_timeout`` seconds (``None``: wait forever).
    """
    if max_message_bytes < 1:
        raise ValueError("max_message_bytes must be positive")
    buf = bytearray()
    pos = 0  # first unconsumed byte; while inside a frame, the frame's start block
    start = -1  # first payload byte while inside a frame, -1 between frames
    scan = 0  # where the next end-block search resumes, so a large frame is searched once
    while True:
        # Everything already buffered is handed out before the next await: one read that
        # carries many frames costs one read.
        while True:
            if start < 0:
                n = len(buf)
                while pos < n and buf[pos] in _BETWEEN_FRAMES:
                    pos += 1
                if pos == n:
                    break
                if buf[pos] != _START:
                    raise MllpUnframedData("data outside an MLLP frame", bytes(buf[pos : pos + 8]))
                start = scan = pos + 1
            end = buf.find(END_BLOCK, scan)
            if end < 0:
                held = len(buf) - start
                # One byte of slack: the last byte may be the 0x1C of a frame that fits exactly.
                if held > max_message_bytes + 1:
                    raise MllpMessageTooLarge(max_message_bytes, held)
                scan = max(start, len(buf) - 1)
                break
            if end - start > max_message_bytes:
                raise MllpMessageTooLarge(max_message_bytes, end - start)
            nested = buf.find(_START, start, end)
            if nested >= 0:
                # A new frame began before this one ended: the peer dropped the rest of a
                # message; merging the two would commit a corrupt one.
                raise MllpUnframedData(
                    "start block inside an MLLP frame", bytes(buf[nested : nested + 8])
                )
            payload = bytes(buf[start:end])
            pos = end + 2
            start = -1
            yield payload

        if pos:
            # Only the unfinished frame (or nothing) is kept, so copying stays O(frame size).
            del buf[:pos]
            if start >= 0:
                start -= pos
                scan -= pos
            pos = 0

        if start >= 0:
            # Never ask for more than the frame may still grow by: oversize is detected without
            # buffering the rest of a huge message.
            want = min(_READ_CHUNK, max_message_bytes + 2 - (len(buf) - start))
        else:
            want = min(_READ_CHUNK, max_message_bytes + 3)
        if idle_timeout is None:
            chunk = await reader.read(want)
        else:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await reader.read(want)
            except TimeoutError as exc:
                raise MllpIdleTimeout(idle_timeout, mid_frame=start >= 0 or bool(buf)) from exc
        if not chunk:
            if start >= 0:
                raise MllpTruncatedFrame(len(buf) - start)
            return
        buf += chunk
