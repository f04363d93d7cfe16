"""Expiry dates of the TLS certificate files the configuration names, for ``/metrics``.

Walks the validated settings for every ``cert_file``, ``ca_file`` and ``client_ca_file`` and
publishes the earliest ``notAfter`` of each file in
``radflow_tls_certificate_expiry_timestamp_seconds`` (the alert rules warn 30 days ahead). It
only reads files: it never builds TLS contexts (that is ``engine.tls``) and never fails start-up
(an unreadable file is a metric and a log line; the TLS context that needs it fails on its own).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from pydantic import BaseModel

from engine.observability.logging import get_logger
from engine.observability.metrics import TLS_CERT_EXPIRY, TLS_CERT_READ_ERRORS

log = get_logger("engine.observability.certs")

#: setting names that hold PEM certificate files (keys are never read here)
CERT_FIELDS = frozenset({"cert_file", "ca_file", "client_ca_file"})


def certificate_files(model: object, path: str = "") -> Iterator[tuple[str, Path]]:
    """``(key path, file)`` for every certificate file set anywhere in ``model``."""
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            value = getattr(model, name)
            where = f"{path}.{name}" if path else name
            if name in CERT_FIELDS and isinstance(value, Path):
                yield where, value
            else:
                yield from certificate_files(value, where)
    elif isinstance(model, dict):
        for key, value in model.items():
            yield from certificate_files(value, f"{path}.{key}")
    elif isinstance(model, list | tuple):
        for i, value in enumerate(model):
            yield from certificate_files(value, f"{path}[{i}]")


def earliest_expiry(pem_file: Path) -> float:
    """Unix time at which the first certificate of ``pem_file`` (a chain or bundle) expires."""
    certificates = x509.load_pem_x509_certificates(pem_file.read_bytes())
    return min(c.not_valid_after_utc.timestamp() for c in certificates)


def refresh_certificate_metrics(settings: object) -> int:
    """Set the expiry gauge for every configured certificate file; how many were read."""
    read = 0
    for setting, file in certificate_files(settings):
        try:
            expiry = earliest_expiry(file)
        except (OSError, ValueError) as exc:
            TLS_CERT_READ_ERRORS.labels(setting, str(file)).set(1)
            log.warning("observability.certificate_unreadable", setting=setting, file=str(file),
                        detail=str(exc))
            continue
        TLS_CERT_READ_ERRORS.labels(setting, str(file)).set(0)
        TLS_CERT_EXPIRY.labels(setting, str(file)).set(expiry)
        read += 1
    return read
