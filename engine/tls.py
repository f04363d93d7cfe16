"""TLS contexts, in one place: for radflow's listeners (DICOM, MLLP) and for the connections
it opens (DICOM and MLLP senders, HTTPS to DICOMweb and FHIR endpoints).

Every context asks for TLS 1.2 at least and verifies the peer by default: a listener with a
``client_ca_file`` requires a client certificate signed by it, and a client checks the server's
certificate and host name against its ``ca_file`` (or the system's CAs) unless the site turned
that off. It must not open connections itself, and it holds no state beyond what a context
records about its own last handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from engine.settings import ClientTlsSettings, TlsSettings


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A listener's context: its certificate chain, and client verification when asked."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ClientTlsContext(ssl.SSLContext):
    """An SSL context that remembers why its last connection's handshake failed.

    pynetdicom catches a failed connect, logs it and hands back an association that is simply
    "not established"; the certificate error a site needs to see would be lost. The sockets
    this context makes record it (one sender, one connection at a time)."""

    handshake_error: ssl.SSLError | None = None


class _RecordingSSLSocket(ssl.SSLSocket):
    def connect(self, address: Any) -> None:
        # Cleared per connection, so a later plain TCP failure is not blamed on old TLS.
        if isinstance(self.context, ClientTlsContext):
            self.context.handshake_error = None
        super().connect(address)

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except ssl.SSLError as exc:
            if isinstance(self.context, ClientTlsContext):
                self.context.handshake_error = exc
            raise


def client_ssl_context(tls: ClientTlsSettings) -> ClientTlsContext:
    """A client context: verification on unless the site turned it off, TLS 1.2 at least."""
    ctx = ClientTlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.sslsocket_class = _RecordingSSLSocket
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_failure(ctx: ssl.SSLContext | None) -> ssl.SSLError | None:
    """Why the TLS handshake of the last connection through ``ctx`` failed, if it did."""
    return ctx.handshake_error if isinstance(ctx, ClientTlsContext) else None


def http_ssl_option(url: str, verify: bool, ca_file: Path | None = None
                    ) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument: the server's certificate and host name checked against
    ``ca_file`` (else the system's CAs), unless verification is turned off."""
    if not url.startswith("https:"):
        return True
    if not verify:
        return False
    return client_ssl_context(ClientTlsSettings(ca_file=ca_file))


# OpenSSL's reason codes (``SSLError.reason``) grouped into what a site has to do about them.
_PROTOCOL_VERSION = frozenset({"UNSUPPORTED_PROTOCOL", "WRONG_SSL_VERSION", "VERSION_TOO_LOW",
                               "TLSV1_ALERT_PROTOCOL_VERSION"})
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST",
                      "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH"})
# X.509 verification codes (``SSLCertVerificationError.verify_code``, X509_V_ERR_*).
_VERIFY_REASONS = {9: "certificate_not_yet_valid", 10: "certificate_expired",
                   23: "certificate_revoked", 12: "certificate_revocation_list_expired"}


def handshake_failure_reason(exc: BaseException) -> str:
    """Why a listener's TLS handshake with a client failed, as a stable word for logs and
    alerts (the handshake's own message goes beside it): ``protocol_version`` (the client
    offered only versions older than TLS 1.2), ``not_tls`` (plain TCP on the TLS port),
    ``no_client_certificate``, ``certificate_expired``, ``certificate_not_yet_valid``,
    ``certificate_revoked``, ``certificate_untrusted`` (no chain to the configured CA),
    ``no_shared_cipher``, ``client_refused_our_certificate``, ``timeout``,
    ``connection_closed`` or, for anything else, ``handshake_failed``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate_untrusted")
    if isinstance(exc, ssl.SSLEOFError | ConnectionError):
        return "connection_closed"
    reason = getattr(exc, "reason", None) or ""
    if reason in _PROTOCOL_VERSION:
        return "protocol_version"
    if reason in _NOT_TLS:
        return "not_tls"
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"):
        return "no_client_certificate"
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return "certificate_untrusted"
    if reason == "NO_SHARED_CIPHER":
        return "no_shared_cipher"
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_")):
        # The client ended the handshake with an alert: it did not accept radflow's side
        # (its certificate, most often).
        return "client_refused_our_certificate" if "CERTIFICATE" in reason or \
            "UNKNOWN_CA" in reason else "handshake_failed"
    return "handshake_failed"
