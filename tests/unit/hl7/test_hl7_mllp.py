"""MLLP framing fed with bytes through ``StreamReader.feed_data``: no sockets, no HL7 parsing."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.hl7.mllp import (
    MllpFramingError,
    MllpIdleTimeout,
    MllpMessageTooLarge,
    MllpTruncatedFrame,
    MllpUnframedData,
    frame,
    read_messages,
)

MSG_A = b"MSH|^~\\&|A|B|C|D|20250101||ORM^O01|1|P|2.5\rPID|1||42"
MSG_B = b"MSH|^~\\&|A|B|C|D|20250101||ORM^O01|2|P|2.5\rPID|1||43"
MB = 1024 * 1024


def _reader(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def _collect(
    reader: asyncio.StreamReader, *, limit: int = MB, idle: float | None = None
) -> list[bytes]:
    return [m async for m in read_messages(reader, max_message_bytes=limit, idle_timeout=idle)]


def test_frame_wraps_payload() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x1cb", b"a\x0bb"])
def test_frame_refuses_block_characters(bad: bytes) -> None:
    with pytest.raises(ValueError):
        frame(bad)


@pytest.mark.asyncio
async def test_two_messages_in_one_chunk() -> None:
    reader = _reader(frame(MSG_A) + b"\r\n" + frame(MSG_B))
    assert await _collect(reader) == [MSG_A, MSG_B]


@pytest.mark.asyncio
async def test_one_byte_writes() -> None:
    reader = asyncio.StreamReader()
    data = frame(MSG_A) + frame(MSG_B)

    async def produce() -> None:
        for i in range(len(data)):
            reader.feed_data(data[i : i + 1])
            await asyncio.sleep(0)  # let the consumer read each byte on its own
        reader.feed_eof()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce())
        got = tg.create_task(_collect(reader))
    assert got.result() == [MSG_A, MSG_B]


@pytest.mark.asyncio
async def test_end_block_split_between_reads() -> None:
    data = frame(MSG_A)
    reader = asyncio.StreamReader()

    async def produce() -> None:
        reader.feed_data(data[:-1])  # ... 0x1C | 0x0D ...
        await asyncio.sleep(0.01)
        reader.feed_data(data[-1:])
        reader.feed_eof()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce())
        got = tg.create_task(_collect(reader))
    assert got.result() == [MSG_A]


@pytest.mark.asyncio
async def test_empty_stream_and_whitespace_between_frames_end_cleanly() -> None:
    assert await _collect(_reader()) == []
    assert await _collect(_reader(b"\r\n", frame(MSG_A), b" \r\n\t\n")) == [MSG_A]


@pytest.mark.asyncio
async def test_message_at_exact_limit_passes_one_byte_more_fails() -> None:
    payload = b"x" * 1000
    assert await _collect(_reader(frame(payload)), limit=1000) == [payload]
    with pytest.raises(MllpMessageTooLarge):
        await _collect(_reader(frame(payload + b"y")), limit=1000)


@pytest.mark.asyncio
async def test_oversize_detected_without_buffering_the_whole_message() -> None:
    reader = asyncio.StreamReader()
    chunk = b"x" * (64 * 1024)
    total = 10 * MB
    fed = 0

    async def produce() -> None:
        nonlocal fed
        reader.feed_data(b"\x0b")
        while fed < total:
            reader.feed_data(chunk)
            fed += len(chunk)
            await asyncio.sleep(0)
        reader.feed_data(b"\x1c\r")
        reader.feed_eof()

    producer = asyncio.create_task(produce())
    started = time.perf_counter()
    with pytest.raises(MllpMessageTooLarge) as info:
        await _collect(reader, limit=MB)
    elapsed = time.perf_counter() - started
    producer.cancel()
    # The reader stopped at the limit: it neither held more than the limit plus the end-block
    # slack nor waited for the other 9 MB to arrive.
    assert info.value.received <= MB + 2
    assert fed < 2 * MB
    assert elapsed < 2.0


@pytest.mark.asyncio
async def test_oversize_with_everything_already_buffered() -> None:
    reader = _reader(frame(b"x" * (10 * MB)))
    with pytest.raises(MllpMessageTooLarge) as info:
        await _collect(reader, limit=MB)
    assert info.value.received <= MB + 2


@pytest.mark.asyncio
async def test_unframed_junk_before_a_frame() -> None:
    with pytest.raises(MllpUnframedData):
        await _collect(_reader(b"GET / HTTP/1.1\r\n" + frame(MSG_A)))


@pytest.mark.asyncio
async def test_junk_after_a_good_frame_yields_the_good_one_first() -> None:
    got: list[bytes] = []
    with pytest.raises(MllpUnframedData):
        async for message in read_messages(
            _reader(frame(MSG_A) + b"junk"), max_message_bytes=MB, idle_timeout=None
        ):
            got.append(message)
    assert got == [MSG_A]


@pytest.mark.asyncio
async def test_start_block_inside_a_frame_is_refused() -> None:
    with pytest.raises(MllpUnframedData):
        await _collect(_reader(b"\x0b" + MSG_A[:20] + frame(MSG_B)))


@pytest.mark.asyncio
async def test_eof_mid_frame() -> None:
    with pytest.raises(MllpTruncatedFrame) as info:
        await _collect(_reader(frame(MSG_A) + b"\x0b" + MSG_B[:10]))
    assert info.value.received == 10
    assert isinstance(info.value, MllpFramingError)


@pytest.mark.asyncio
async def test_eof_between_end_block_bytes_is_truncation() -> None:
    with pytest.raises(MllpTruncatedFrame):
        await _collect(_reader(b"\x0b" + MSG_A + b"\x1c"))


@pytest.mark.asyncio
async def test_idle_timeout_between_frames() -> None:
    with pytest.raises(MllpIdleTimeout) as info:
        await _collect(_reader(frame(MSG_A), eof=False), idle=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.mid_frame is False


@pytest.mark.asyncio
async def test_idle_timeout_mid_frame() -> None:
    with pytest.raises(MllpIdleTimeout) as info:
        await _collect(_reader(b"\x0b" + MSG_A, eof=False), idle=0.05)
    assert info.value.mid_frame is True


@pytest.mark.asyncio
async def test_many_messages_in_one_large_feed_is_linear() -> None:
    payload = MSG_A * 20  # ~1 KB
    data = frame(payload) * 5000
    started = time.perf_counter()
    got = await _collect(_reader(data))
    assert len(got) == 5000
    assert all(m == payload for m in got)
    assert time.perf_counter() - started < 2.0


_payload = st.binary(max_size=300).map(lambda b: b.replace(b"\x1c", b"").replace(b"\x0b", b""))


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(_payload, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
)
def test_frame_then_read_round_trip(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(frame(p) for p in payloads)
    points = sorted({c for c in cuts if c < len(data)} | {0, len(data)})

    async def run() -> list[bytes]:
        reader = asyncio.StreamReader()

        async def produce() -> None:
            for a, b in itertools.pairwise(points):
                reader.feed_data(data[a:b])
                await asyncio.sleep(0)
            reader.feed_eof()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            got = tg.create_task(_collect(reader, limit=300))
        return got.result()

    assert asyncio.run(run()) == payloads
