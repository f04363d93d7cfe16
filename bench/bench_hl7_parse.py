"""HL7 v2 parse cost per ~1 KB ORM^O01: radflow's parser against hl7apy and ``hl7``, one run.

This script owns only that comparison (plus, for scale, radflow's ACK build). It is hand-run,
never asserts on timings, and prints microseconds per message and radflow's ratio to each
peer. radflow's parser splits lazily, so its line includes reading the fields an ingress
handler reads (type, trigger, control id, sender, patient id, accession number, ZDS UID):
a parse that skipped them would flatter it.

    python bench/bench_hl7_parse.py [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hl7
from hl7apy.parser import parse_message

from engine.hl7.ack import build_ack
from engine.hl7.message import Hl7Message

ORM_O01 = (
    "MSH|^~\\&|RIS|HOSPITAL^1.2.840.99999.1^ISO|RADFLOW|RADIOLOGY|20251125101500||ORM^O01^ORM_O01"
    "|MSG20251125101500001|P|2.5.1||||||8859/1\r"
    "PID|1||PAT0012345^^^HOSPITAL^MR~9434765919^^^NHS^NH||Müller^Jürgen^Karl^^Dr.^^L||19650412|M"
    "|||Hauptstraße 12^^München^BY^80331^DE^H||+49 89 1234567^PRN^PH|||M||ACC0099887766\r"
    "PV1|1|O|RAD^CT1^01^HOSPITAL||||0123^Schmidt^Anna^^^Dr.|||||||||||V0099887766^^^HOSPITAL^VN"
    "|||||||||||||||||||||||||20251125100000\r"
    "ORC|NW|ORD0099887766^RIS|FIL0099887766^PACS||SC||1^^^20251125110000^^R||20251125101500"
    "|0456^Weber^Tom|||RAD^^^HOSPITAL\r"
    "OBR|1|ORD0099887766^RIS|FIL0099887766^PACS|CTHEAD^CT Kopf nativ^L^71250^CT HEAD^C4|||"
    "20251125110000|||||||||0123^Schmidt^Anna^^^Dr.||ACC0099887766|RP0099887766|SPS0099887766|"
    "|||CT|||1^^^20251125110000^^R||||Kopfschmerz seit 3 Tagen\\X0D0A\\Ausschluss Blutung\r"
    "ZDS|1.2.826.0.1.3680043.8.498.12345678901234567890^RADFLOW^Application^DICOM\r"
    "NTE|1||Patient klaustrophob, Sedierung nach Protokoll; KM-Allergie 2019 (Urtikaria)\r"
)
PAYLOAD = ORM_O01.encode("latin-1")
NOW = datetime(2025, 11, 25, 10, 15, 0, tzinfo=UTC)


def radflow_parse_and_read() -> None:
    msg = Hl7Message.parse(PAYLOAD)
    _ = (msg.message_type, msg.trigger_event, msg.control_id, msg.sending_application)
    _ = (msg.get("PID-3.1"), msg.get("OBR-18"), msg.get("ZDS-1.1"))


def radflow_parse_only() -> None:
    Hl7Message.parse(PAYLOAD)


MSG = Hl7Message.parse(PAYLOAD)


def radflow_build_ack() -> None:
    build_ack(MSG, "AA", sending_application="RADFLOW", sending_facility="RAD", now=NOW)


def hl7_parse() -> None:
    msg = hl7.parse(PAYLOAD, encoding="latin-1")
    _ = (str(msg["MSH.9.1"]), str(msg["MSH.10"]), str(msg["PID.3.1"]))


TEXT = ORM_O01


def hl7apy_parse() -> None:
    msg = parse_message(TEXT)
    _ = (msg.msh.msh_9.to_er7(), msg.msh.msh_10.to_er7())


def per_message_us(fn: Callable[[], None], seconds: float) -> float:
    """Median of 5 timed batches, each sized to take about ``seconds / 5``."""
    fn()  # warm caches (path parsing, regexes, hl7apy's lazy imports)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > 0.05:
            break
        n *= 2
    batch = max(1, int(n * (seconds / 5) / 0.05))
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return sorted(samples)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per line")
    args = parser.parse_args()
    print(f"message: ORM^O01, {len(PAYLOAD)} bytes, {ORM_O01.count(chr(13))} segments")
    rows = [
        (
            "radflow Hl7Message.parse + 7 reads",
            per_message_us(radflow_parse_and_read, args.seconds),
        ),
        ("radflow Hl7Message.parse only", per_message_us(radflow_parse_only, args.seconds)),
        ("hl7 0.4.5 hl7.parse + 3 reads", per_message_us(hl7_parse, args.seconds)),
        ("hl7apy 1.3.5 parse_message + 2 reads", per_message_us(hl7apy_parse, args.seconds)),
        ("radflow build_ack (AA)", per_message_us(radflow_build_ack, args.seconds)),
    ]
    ours = rows[0][1]
    print(f"{'work':<40}{'us/msg':>12}{'msg/s':>12}{'vs radflow':>12}")
    for name, us in rows:
        ratio = f"{us / ours:>11.1f}x" if name.startswith(("hl7 ", "hl7apy")) else f"{'':>12}"
        print(f"{name:<40}{us:>12.1f}{1e6 / us:>12,.0f}{ratio}")


if __name__ == "__main__":
    main()
