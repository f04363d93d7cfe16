"""Test certificates made with the openssl command-line tool: a self-signed certificate, or one
signed by a test CA, for 127.0.0.1. Shared by the TLS tests (MLLP, DICOM, HTTPS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.proc import HOST


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def make_cert(folder: Path, name: str, ca: tuple[Path, Path] | None = None
              ) -> tuple[Path, Path]:
    """(certificate, key) PEM files for ``name``, valid for 127.0.0.1: self-signed, or signed
    by ``ca`` (its certificate and key)."""
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subject = ["-subj", f"/CN={name}"]
    san = f"subjectAltName=IP:{HOST}"
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", str(key), "-out", str(cert), *subject, "-addext", san],
                       check=True, capture_output=True)
        return cert, key
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text(san + "\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(csr), *subject], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey",
                    str(ca[1]), "-CAcreateserial", "-days", "2", "-out", str(cert),
                    "-extfile", str(ext)], check=True, capture_output=True)
    return cert, key
