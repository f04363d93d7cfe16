"""STOW-RS sender: spooled instances to a DICOMweb endpoint (PS3.18 10.5) with aiohttp.

Owns the HTTP side: batching a lease into requests by count and size, the
``multipart/related; type="application/dicom"`` body (whole Part 10 files, streamed from the
spool unless a morph or a transcode needs the dataset), bearer or basic authentication, TLS
verification (on unless the site turns it off), and the classification of the answer: 200 all
stored; 202 some stored (each instance listed in FailedSOPSequence classified by its
FailureReason); 400/409 and other 4xx permanent; 5xx, 429, 401/403 and timeouts transient. It
must not decide retries.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from engine.dicom.wire import FileSpan
from engine.egress.classify import Verdict, classify_http, classify_stow_failure
from engine.egress.delivery import Delivery, DicomObject, MorphFn, SendOutcome, failed
from engine.egress.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from engine.egress.objects import (
    is_large,
    morphed,
    part10_bytes,
    spool_file,
    verified_bytes,
    verified_file,
)
from engine.observability.logging import about, get_logger
from engine.settings import DicomwebDestination, HttpAuth
from engine.tls import http_ssl_option

log = get_logger("engine.egress.dicomweb")

_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_BODY_EXCERPT = 300


def auth_headers(auth: HttpAuth | None) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.type == "bearer":
        token = auth.token.get_secret_value() if auth.token else ""
        return {"Authorization": f"Bearer {token}"}
    basic = aiohttp.BasicAuth(auth.username or "",
                              auth.password.get_secret_value() if auth.password else "")
    return {"Authorization": basic.encode()}


def http_failure_reason(exc: aiohttp.ClientError) -> str:
    """The outcome reason of a request that got no HTTP answer: a failed TLS handshake (an
    untrusted or mismatched certificate, a site configuration matter) or an unreachable peer."""
    return "tls_failed" if isinstance(exc, aiohttp.ClientSSLError) else "unreachable"


async def http_check(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     timeout: float, what: str) -> str:
    """GET ``url`` as a destination check (DICOMweb and FHIR); the body of a 2xx answer, or a
    :class:`DeliveryError` with the exact failure: TLS, unreachable, timeout, or the HTTP
    status with the start of the body (401/403 name the credentials)."""
    try:
        async with session.get(url, headers=headers) as resp:
            status = resp.status
            text = await resp.text(errors="replace")
    except TimeoutError as exc:
        raise TransientDeliveryError(f"no {what} answer within {timeout:g} s",
                                     reason="timeout") from exc
    except aiohttp.ClientError as exc:
        raise TransientDeliveryError(f"{what} request failed: {exc}",
                                     reason=http_failure_reason(exc)) from exc
    if 200 <= status < 300:
        return text
    hint = " (check the destination's auth)" if status in (401, 403) else ""
    raise TransientDeliveryError(f"GET {url} answered HTTP {status}{hint}: "
                                 f"{text[:_BODY_EXCERPT]}".rstrip(": "),
                                 reason=f"http_{status}", status=status)


@dataclass(frozen=True, slots=True)
class _Part:
    index: int
    obj: DicomObject
    size: int


def plan_requests(parts: Sequence[_Part], max_count: int, max_bytes: int) -> list[list[_Part]]:
    """Consecutive groups of at most ``max_count`` parts and ``max_bytes`` bytes (a single
    larger instance still goes alone)."""
    out: list[list[_Part]] = []
    current: list[_Part] = []
    size = 0
    for part in parts:
        if current and (len(current) >= max_count or size + part.size > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(part)
        size += part.size
    if current:
        out.append(current)
    return out


async def _streamed(chunks: Sequence[bytes | FileSpan]) -> AsyncIterator[bytes]:
    """The multipart body, a large part read from its file 1 MiB at a time (off the loop)."""
    for chunk in chunks:
        if isinstance(chunk, bytes):
            yield chunk
            continue
        pieces = chunk.chunks(1 << 20)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            yield piece


def failed_instances(body: Any) -> dict[str, int]:
    """SOP Instance UID → FailureReason from a STOW-RS response (DICOM JSON)."""
    out: dict[str, int] = {}
    if not isinstance(body, dict):
        return out
    for item in (body.get(_FAILED_SOP_SEQUENCE) or {}).get("Value") or []:
        uid = ((item.get(_REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]
        reason = ((item.get(_FAILURE_REASON) or {}).get("Value") or [0])[0]
        if uid:
            out[str(uid)] = int(reason or 0)
    return out


class StowSender:
    """One worker's STOW-RS client for one destination."""

    def __init__(self, name: str, config: DicomwebDestination, spool_root: Path,
                 morph: MorphFn | None = None) -> None:
        self.name = name
        self.config = config
        self.spool_root = spool_root
        self.morph = morph
        self.max_batch = config.batch_max_count
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Accept": "application/dicom+json", **auth_headers(config.auth)}
        self._sent_uid: dict[int, str] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(
                    limit=1, ssl=http_ssl_option(self.config.url, self.config.verify_tls,
                                                 self.config.ca_file)))
        return self._session

    async def idle(self) -> None:
        return None  # aiohttp closes idle keep-alive connections itself

    async def check(self) -> str:
        """A QIDO-RS search for one study at the STOW-RS URL (``GET .../studies?limit=1``),
        with this destination's auth and TLS: the cheapest authenticated read a DICOMweb
        service answers."""
        url = f"{self.config.url.rstrip('/')}?limit=1"
        body = await http_check(self._client(), url, self._headers, self.config.timeout,
                                "QIDO-RS")
        try:
            found = len(json.loads(body)) if body.strip() else 0
        except (ValueError, TypeError):
            found = 0
        return f"QIDO-RS GET {url}: HTTP 2xx, {found} stud{'y' if found == 1 else 'ies'}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        outcomes: list[SendOutcome | None] = [None] * len(batch)
        parts: list[_Part] = []
        for i, delivery in enumerate(batch):
            try:
                obj = DicomObject.of(delivery)
                size = obj.size_bytes
                if size is None:
                    path = await asyncio.to_thread(spool_file, obj, self.spool_root)
                    size = path.stat().st_size
                parts.append(_Part(i, obj, size))
            except DeliveryError as exc:
                outcomes[i] = failed(exc)
        for group in plan_requests(parts, self.config.batch_max_count,
                                   self.config.batch_max_bytes):
            for part, outcome in zip(group, await self._post(group), strict=True):
                outcomes[part.index] = outcome
        return [o if o is not None else failed(TransientDeliveryError("not sent"))
                for o in outcomes]

    def _bodies(self, group: Sequence[_Part]
                ) -> list[tuple[_Part, bytes | FileSpan | DeliveryError]]:
        out: list[tuple[_Part, bytes | FileSpan | DeliveryError]] = []
        for part in group:
            try:
                with about(destination=self.name, sop_instance_uid=part.obj.sop_instance_uid):
                    out.append((part, self._body(part)))
            except DeliveryError as exc:
                out.append((part, exc))
            except OSError as exc:
                out.append((part, PermanentDeliveryError(f"cannot read spool file: {exc}",
                                                         reason="spool_missing")))
        return out

    def _body(self, part: _Part) -> bytes | FileSpan:
        if is_large(part.obj) and not part.obj.morph:
            # Too large to hold: verified by a streaming read, streamed from the file.
            path = verified_file(part.obj, self.spool_root)
            return FileSpan(path, 0, path.stat().st_size)
        whole = verified_bytes(part.obj, self.spool_root)  # before it leaves
        if not part.obj.morph:
            return whole
        ds = morphed(whole, part.obj.morph, self.morph, part.obj.secret_fingerprint)
        # A morph may remap UIDs: the answer names the instance actually sent.
        self._sent_uid[part.index] = str(ds.get("SOPInstanceUID", ""))
        return part10_bytes(ds)

    async def _post(self, group: Sequence[_Part]) -> list[SendOutcome]:
        started = time.perf_counter()
        bodies = await asyncio.to_thread(self._bodies, group)
        result: dict[int, SendOutcome] = {
            p.index: failed(b) for p, b in bodies if isinstance(b, DeliveryError)}
        sendable = [(p, b) for p, b in bodies if isinstance(b, bytes | FileSpan)]
        if sendable:
            boundary = f"radflow-{secrets.token_hex(12)}"
            chunks: list[bytes | FileSpan] = []
            for _part, data in sendable:
                chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                           data, b"\r\n"]
            chunks.append(f"--{boundary}--\r\n".encode())
            headers = {**self._headers, "Content-Type":
                       f'multipart/related; type="application/dicom"; boundary={boundary}'}
            body: bytes | AsyncIterator[bytes]
            if any(isinstance(c, FileSpan) for c in chunks):
                # Streamed, with its length given so the body is not sent chunked.
                headers["Content-Length"] = str(sum(len(c) for c in chunks))
                body = _streamed(chunks)
            else:
                body = b"".join(c for c in chunks if isinstance(c, bytes))
            for part, outcome in zip([p for p, _ in sendable],
                                     await self._request(body, headers,
                                                         [p for p, _ in sendable]),
                                     strict=True):
                result[part.index] = outcome
        seconds = time.perf_counter() - started
        for outcome in result.values():
            outcome.seconds = seconds
        return [result[p.index] for p in group]

    async def _request(self, body: bytes | AsyncIterator[bytes], headers: dict[str, str],
                       parts: Sequence[_Part]) -> list[SendOutcome]:
        try:
            async with self._client().post(self.config.url, data=body,
                                           headers=headers) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
        except TimeoutError:
            err = TransientDeliveryError(f"no STOW-RS answer within {self.config.timeout:g} s",
                                         reason="timeout")
            return [failed(err) for _ in parts]
        except aiohttp.ClientError as exc:
            err = TransientDeliveryError(f"STOW-RS request failed: {exc}",
                                         reason=http_failure_reason(exc))
            return [failed(err) for _ in parts]
        try:
            doc: Any = json.loads(text) if text.strip() else None
        except ValueError:
            doc = None
        failures = failed_instances(doc)
        verdict = classify_http(status, api="stow")
        out: list[SendOutcome] = []
        for part in parts:
            uid = self._sent_uid.pop(part.index, "") or part.obj.sop_instance_uid
            notes = {"status": status}
            if uid in failures:
                reason = failures[uid]
                v = classify_stow_failure(reason)
                cls = PermanentDeliveryError if v is Verdict.PERMANENT else TransientDeliveryError
                out.append(SendOutcome(cls(f"STOW-RS {status}: instance failed, reason "
                                           f"0x{reason:04X}", reason=f"stow_{reason:04x}",
                                           status=status), 0.0, notes))
            elif verdict is Verdict.DELIVERED:
                out.append(SendOutcome(None, 0.0, notes))
            else:
                cls = PermanentDeliveryError if verdict is Verdict.PERMANENT \
                    else TransientDeliveryError
                out.append(SendOutcome(cls(f"STOW-RS answered HTTP {status}: "
                                           f"{text[:_BODY_EXCERPT]}", reason=f"http_{status}",
                                           status=status), 0.0, notes))
        return out
