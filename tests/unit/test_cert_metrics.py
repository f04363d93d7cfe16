"""Certificate expiry metrics: every certificate file the configuration names is found, and its
expiry date is the one openssl wrote into it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.observability.certs import certificate_files, refresh_certificate_metrics
from engine.observability.metrics import REGISTRY
from engine.settings import Settings
from tests.helpers.certs import have_openssl, make_cert


@pytest.mark.skipif(not have_openssl(), reason="openssl not installed")
def test_configured_certificates_are_found_and_their_expiry_exported(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "listener")
    settings = Settings.model_validate({
        "dicom": {"listeners": [{"name": "tls", "port": 2762,
                                 "tls": {"cert_file": str(cert), "key_file": str(key)}}]},
        "destinations": {"pacs": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": 104, "tls": {"ca_file": str(tmp_path / "gone.pem")}}},
    })
    found = dict(certificate_files(settings))
    assert found == {"dicom.listeners[0].tls.cert_file": cert,
                     "destinations.pacs.tls.ca_file": tmp_path / "gone.pem"}

    assert refresh_certificate_metrics(settings) == 1
    end = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", str(cert)],
                         capture_output=True, text=True, check=True).stdout.strip()
    expected = datetime.strptime(end.split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    value = REGISTRY.get_sample_value("radflow_tls_certificate_expiry_timestamp_seconds",
                                      {"setting": "dicom.listeners[0].tls.cert_file",
                                       "file": str(cert)})
    assert value == expected.timestamp()
    assert REGISTRY.get_sample_value("radflow_tls_certificate_unreadable",
                                     {"setting": "destinations.pacs.tls.ca_file",
                                      "file": str(tmp_path / "gone.pem")}) == 1
