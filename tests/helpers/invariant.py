"""The one "nothing lost" checker of the reliability suite and the chaos soak.

What RELIABILITY.md calls nothing lost, checked from outside the engine:

* **acked ⊆ delivered** for every destination the routes name: every identifier radflow
  answered with success (C-STORE ``0x0000``, HL7 ``AA``/``CA``, HTTP 2xx) arrived at each of those
  destinations at least once, as the destination itself records it (storescp's files, the MLLP
  receiver's messages);
* **duplicates carry the same identifier**: whatever a destination holds is an identifier that was
  sent (a redelivery never mints a new SOP Instance UID or control ID);
* **nothing half-written**: no spool temp file, no spool object without its journal row, no
  journal row whose object is missing or not the bytes recorded (size and SHA-256).

Tests and ``bench/soak.py`` call :func:`check` (or :func:`assert_nothing_lost`) with plain sets of
identifiers, so the same rules hold wherever they are applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.proc import RadflowProcess


@dataclass
class Verdict:
    """The checker's findings; ``ok`` when there are none."""

    acked: int
    delivered: dict[str, int]
    missing: dict[str, set[str]] = field(default_factory=dict)
    foreign: dict[str, set[str]] = field(default_factory=dict)
    half_written: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.missing.values()) and not any(self.foreign.values()) \
            and not self.half_written

    def report(self) -> str:
        lines = [f"acked {self.acked}; delivered " + ", ".join(
            f"{d}={n}" for d, n in sorted(self.delivered.items()))]
        for dest, ids in sorted(self.missing.items()):
            if ids:
                lines.append(f"LOST at {dest}: {len(ids)} acked, never delivered, e.g. "
                             f"{sorted(ids)[:3]}")
        for dest, ids in sorted(self.foreign.items()):
            if ids:
                lines.append(f"FOREIGN at {dest}: {len(ids)} identifiers never sent, e.g. "
                             f"{sorted(ids)[:3]}")
        lines += [f"HALF-WRITTEN: {item}" for item in self.half_written[:10]]
        lines.append("nothing-lost check: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def half_written(rf: RadflowProcess, *, check_digests: bool = True) -> list[str]:
    """What a crash must not leave behind in ``rf``'s spool and journal (read from disk)."""
    found = [f"temp file {p.name}" for p in rf.spool_temp_files()]
    rows = rf.journal_rows()
    by_path = {str(r["spool_path"]): r for r in rows}
    root = rf.spool_dir
    for path in rf.spool_objects():
        if str(path.relative_to(root)) not in by_path:
            found.append(f"spool object without a journal row: {path.relative_to(root)}")
    for rel, row in by_path.items():
        obj = root / rel
        if not obj.is_file():
            found.append(f"journal row {row['id']} ({row['sop_instance_uid']}) without its "
                         f"object {rel}")
            continue
        if obj.stat().st_size != int(row["size_bytes"]):
            found.append(f"journal row {row['id']}: object is {obj.stat().st_size} bytes, "
                         f"recorded {row['size_bytes']}")
        elif check_digests and _sha256(obj) != row["sha256"]:
            found.append(f"journal row {row['id']}: object digest differs from the recorded one")
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check(acked: Iterable[str], delivered: Mapping[str, Iterable[str]], *,
          sent: Iterable[str] | None = None, rf: RadflowProcess | None = None,
          check_digests: bool = True) -> Verdict:
    """Judge one run.

    ``acked``: identifiers (SOP Instance UIDs, control IDs) radflow acknowledged. ``delivered``:
    for each destination the routes name for them, what that destination holds. ``sent``: every
    identifier offered to radflow (acked or not; default ``acked``), the only ones a destination
    may hold. ``rf``: also check its spool and journal for half-written state.
    """
    acked_set = set(acked)
    sent_set = set(sent) if sent is not None else set(acked_set)
    sent_set |= acked_set
    verdict = Verdict(acked=len(acked_set), delivered={})
    for dest, ids in delivered.items():
        got = set(ids)
        verdict.delivered[dest] = len(got)
        verdict.missing[dest] = acked_set - got
        verdict.foreign[dest] = got - sent_set
    if rf is not None:
        verdict.half_written = half_written(rf, check_digests=check_digests)
    return verdict


def assert_nothing_lost(acked: Iterable[str], delivered: Mapping[str, Iterable[str]], *,
                        sent: Iterable[str] | None = None, rf: RadflowProcess | None = None
                        ) -> Verdict:
    """:func:`check`, failing the test with the checker's report when anything is wrong."""
    verdict = check(acked, delivered, sent=sent, rf=rf)
    assert verdict.ok, verdict.report()
    return verdict
