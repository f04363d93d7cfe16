"""Fuzz harness: the C-STORE intake checks over a dataset's bytes (``check_structure`` with the
dataset walker, then ``read_keys``), in each transfer syntax intake accepts.

The first byte picks the transfer syntax. Expected: radflow's refusals
(:class:`~engine.errors.RadflowError`, e.g. a malformed dataset, ``0xC000``-class). Everything
else, including pydicom exceptions leaking out of ``read_keys``, is a crash: in the engine it
would turn a clear refusal into an internal error.
"""

from __future__ import annotations

from tests.fuzz._common import fuzz, instrumented

with instrumented():
    from engine.dicom.vr import is_valid_uid
    from engine.errors import RadflowError
    from engine.ingress.dimse.encoding import check_structure, read_keys

SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.2")


def one_input(data: bytes) -> None:
    if not data:
        return
    syntax = SYNTAXES[data[0] % len(SYNTAXES)]
    try:
        keys = read_keys(check_structure(data[1:], syntax))
    except RadflowError:
        return
    for uid in (keys.sop_instance_uid, keys.sop_class_uid):
        if uid is not None:
            is_valid_uid(uid)


if __name__ == "__main__":
    fuzz(one_input)
