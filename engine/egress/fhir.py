"""FHIR sender: JSON resources to an EHR's FHIR R4 REST API with aiohttp.

Owns the request for each row's ``resource``: an ImagingStudy, ServiceRequest or Task with an
``identifier`` is written with a conditional update (``PUT [base]/[type]?identifier=system|value``,
FHIR R4 3.1.0.4.3: it creates the resource when none matches, so a retry never makes a
duplicate); one with an ``id`` and no identifier is ``PUT [base]/[type]/[id]``; anything else is
created with ``POST``. Bearer or basic auth, ``application/fhir+json``, TLS verification on by
default. Classification (``classify.classify_http`` with FHIR's meaning of 409) is the only
decision made here; retries belong to the dispatcher.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from engine.egress.classify import Verdict, classify_http
from engine.egress.delivery import Delivery, SendOutcome, failed
from engine.egress.dicomweb import auth_headers, http_check, http_failure_reason
from engine.egress.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from engine.settings import FhirDestination
from engine.tls import http_ssl_option

_RESOURCE_TYPES = frozenset({"ImagingStudy", "ServiceRequest", "Task", "Observation",
                             "DiagnosticReport", "Procedure", "Patient", "Encounter"})
_BODY_EXCERPT = 300


def request_for(base_url: str, resource: Mapping[str, Any], method: str | None = None
                ) -> tuple[str, str]:
    """(method, URL) for one resource (see the module docstring)."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in _RESOURCE_TYPES:
        raise PermanentDeliveryError(f"unsupported or missing resourceType {rtype!r}",
                                     reason="bad_payload")
    base = base_url.rstrip("/")
    identifiers = resource.get("identifier") or []
    ident = identifiers[0] if isinstance(identifiers, list) and identifiers else None
    if method == "POST":
        return "POST", f"{base}/{rtype}"
    if isinstance(ident, dict) and ident.get("value"):
        token = f"{ident.get('system', '')}|{ident['value']}" if ident.get("system") \
            else str(ident["value"])
        return "PUT", f"{base}/{rtype}?identifier={quote(token, safe='')}"
    if isinstance(resource.get("id"), str):
        return "PUT", f"{base}/{rtype}/{quote(resource['id'], safe='')}"
    return "POST", f"{base}/{rtype}"


def outcome_text(body: str) -> str:
    """The diagnostics of an OperationOutcome, else the start of the body."""
    try:
        doc = json.loads(body)
        issues = doc.get("issue") or []
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code")
                 for i in issues if isinstance(i, dict)]
        if texts:
            return "; ".join(str(t) for t in texts if t)[:_BODY_EXCERPT]
    except (ValueError, AttributeError):
        pass
    return body[:_BODY_EXCERPT]


class FhirSender:
    """One worker's FHIR client for one destination."""

    max_batch = 16

    def __init__(self, name: str, config: FhirDestination) -> None:
        self.name = name
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/fhir+json",
                         "Accept": "application/fhir+json", **auth_headers(config.auth)}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(
                    limit=1, ssl=http_ssl_option(self.config.base_url, self.config.verify_tls,
                                                 self.config.ca_file)))
        return self._session

    async def idle(self) -> None:
        return None

    async def check(self) -> str:
        """``GET [base]/metadata`` (the server's CapabilityStatement), with this destination's
        auth and TLS."""
        url = f"{self.config.base_url.rstrip('/')}/metadata"
        body = await http_check(self._client(), url, self._headers, self.config.timeout,
                                "FHIR")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
            raise TransientDeliveryError(f"GET {url} did not return a CapabilityStatement",
                                         reason="bad_answer")
        version = doc.get("fhirVersion") or "unknown"
        return f"FHIR GET {url}: CapabilityStatement, FHIR version {version}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, batch: Sequence[Delivery]) -> list[SendOutcome]:
        return [await self._send_one(d) for d in batch]

    async def _send_one(self, delivery: Delivery) -> SendOutcome:
        started = time.perf_counter()
        try:
            resource = delivery.payload.get("resource")
            if not isinstance(resource, dict):
                raise PermanentDeliveryError(f"outbox row {delivery.row_id}: no resource",
                                             reason="bad_payload")
            method_opt = delivery.payload.get("method")
            method, url = request_for(self.config.base_url, resource,
                                      method_opt if isinstance(method_opt, str) else None)
            try:
                async with self._client().request(method, url, data=json.dumps(resource),
                                                  headers=self._headers) as resp:
                    status = resp.status
                    text = await resp.text(errors="replace")
            except TimeoutError as exc:
                raise TransientDeliveryError(f"no FHIR answer within {self.config.timeout:g} s",
                                             reason="timeout") from exc
            except aiohttp.ClientError as exc:
                raise TransientDeliveryError(f"FHIR request failed: {exc}",
                                             reason=http_failure_reason(exc)) from exc
        except DeliveryError as exc:
            return failed(exc, time.perf_counter() - started)
        seconds = time.perf_counter() - started
        notes = {"status": status, "method": method, "resource_type": resource["resourceType"]}
        verdict = classify_http(status, api="fhir")
        if verdict is Verdict.DELIVERED:
            return SendOutcome(None, seconds, notes)
        cls = PermanentDeliveryError if verdict is Verdict.PERMANENT else TransientDeliveryError
        return SendOutcome(cls(f"FHIR {method} answered HTTP {status}: {outcome_text(text)}",
                               reason=f"http_{status}", status=status), seconds, notes)
