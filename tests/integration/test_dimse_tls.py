"""DICOM over TLS into a real radflow process, with DCMTK's echoscu and storescu (``+tls``).

What a site checks: a modality with a certificate from the site's CA stores over TLS and the
instance is kept; a modality without a client certificate is refused when the listener asks for
one; a plain-TCP SCU gets nowhere while the listener keeps serving TLS clients; and a client that
connects and never starts its handshake does not hold up anyone else (the handshake runs on the
connection's own thread, bounded by the ACSE timeout). Certificates are made with openssl.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import dicomgen
from tests.helpers.certs import have_openssl, make_cert
from tests.helpers.proc import HOST, RadflowProcess, echoscu, store_responses, storescu

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(120),
              pytest.mark.skipif(not have_openssl(), reason="needs openssl")]


class Pki:
    """The site CA, radflow's certificate and a modality's certificate, both signed by it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = make_cert(folder, "site-ca")
        self.radflow = make_cert(folder, "radflow", ca=self.ca)
        self.modality = make_cert(folder, "modality", ca=self.ca)
        self.intruder = make_cert(folder, "intruder", ca=self.ca)

    def client_args(self, cert: tuple[Path, Path] | None = None) -> tuple[str, ...]:
        """DCMTK options: TLS with the modality's (or ``cert``'s) key and certificate, trusting
        the site CA."""
        cert = cert or self.modality
        return ("+tls", str(cert[1]), str(cert[0]), "+cf", str(self.ca[0]))

    def anonymous_args(self) -> tuple[str, ...]:
        """TLS without a client certificate, still checking radflow's."""
        return ("+tla", "+cf", str(self.ca[0]))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def tls_radflow(radflow: Any, pki: Pki, *, client_ca: bool, acse_timeout: float = 10,
                **listener: Any) -> RadflowProcess:
    tls = {"cert_file": str(pki.radflow[0]), "key_file": str(pki.radflow[1])}
    if client_ca:
        tls["client_ca_file"] = str(pki.ca[0])
    if listener.get("allowed_calling"):
        listener.setdefault("accept_any_calling", False)
    rf: RadflowProcess = radflow({"dicom": {"listeners": [
        {"tls": tls, "acse_timeout": acse_timeout, **listener}]}})
    return rf


def test_a_modality_stores_over_tls(radflow: Any, pki: Pki, tmp_path: Path) -> None:
    rf = tls_radflow(radflow, pki, client_ca=True)
    series = dicomgen.write_series(tmp_path / "send", 3)
    result = storescu(rf, [i.path for i in series], *pki.client_args())
    assert store_responses(result.stdout) == ["Success"] * 3, result.stdout
    assert {str(r["sop_instance_uid"]) for r in rf.journal_rows()} == \
        {i.sop_instance_uid for i in series}


def test_without_a_client_certificate_is_refused_when_asked(radflow: Any, pki: Pki) -> None:
    rf = tls_radflow(radflow, pki, client_ca=True)
    refused = echoscu(rf, *pki.anonymous_args())
    assert refused.returncode != 0, refused.stdout
    event = rf.wait_for_event("ingress.dimse.tls_failed")
    assert event["peer_host"] == HOST and event["reason"] == "no_client_certificate"
    assert rf.metric("radflow_dimse_rejections_total", listener="main",
                     reason="tls_failed") >= 1
    assert echoscu(rf, *pki.client_args()).returncode == 0


def test_anonymous_tls_is_enough_without_client_ca(radflow: Any, pki: Pki) -> None:
    rf = tls_radflow(radflow, pki, client_ca=False)
    result = echoscu(rf, *pki.anonymous_args())
    assert result.returncode == 0, result.stdout


def test_plain_tcp_gets_nowhere_and_tls_clients_still_work(radflow: Any, pki: Pki) -> None:
    rf = tls_radflow(radflow, pki, client_ca=True)
    plain = echoscu(rf)
    assert plain.returncode != 0, plain.stdout
    assert rf.wait_for_event("ingress.dimse.tls_failed")["reason"] == "not_tls"
    assert echoscu(rf, *pki.client_args()).returncode == 0


def test_a_silent_connection_does_not_block_the_listener(radflow: Any, pki: Pki) -> None:
    rf = tls_radflow(radflow, pki, client_ca=True, acse_timeout=60)
    with socket.create_connection((HOST, rf.port), timeout=10) as silent:
        result = echoscu(rf, *pki.client_args())
        assert result.returncode == 0, result.stdout
        # The echo was served while the silent connection still waits for its handshake.
        silent.settimeout(0.2)
        with pytest.raises(TimeoutError):
            silent.recv(1)


def test_a_silent_connection_is_closed_after_the_acse_timeout(radflow: Any, pki: Pki) -> None:
    rf = tls_radflow(radflow, pki, client_ca=True, acse_timeout=1)
    with socket.create_connection((HOST, rf.port), timeout=10) as silent:
        silent.settimeout(30)
        assert silent.recv(1) == b""
    event = rf.wait_for_event("ingress.dimse.tls_failed")
    assert event["listener"] == "main" and event["peer_host"] == HOST
    assert event["reason"] == "timeout"


def test_an_ae_title_can_be_bound_to_a_certificate(radflow: Any, pki: Pki) -> None:
    """Both certificates come from the site CA; only the modality's may call as ECHOSCU."""
    rf = tls_radflow(radflow, pki, client_ca=True,
                     allowed_calling=[{"ae_title": "ECHOSCU", "certificate": "modality"}])
    assert echoscu(rf, *pki.client_args()).returncode == 0
    refused = echoscu(rf, *pki.client_args(pki.intruder))
    assert refused.returncode != 0, refused.stdout
    event = rf.wait_for_event("ingress.dimse.association.rejected")
    assert event["reason"] == "calling_ae_not_allowed" and event["calling_ae"] == "ECHOSCU"
