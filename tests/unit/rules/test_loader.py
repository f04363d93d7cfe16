"""Loading the routes folder: every problem at once with file, line and key path; the shipped
examples; evaluation semantics (fan-out, stop, fallback, unmatched, triggers)."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import DicomSubject, RoutingContext, Ruleset
from engine.settings import SettingsError
from tests.helpers import dicomgen

REPO = Path(__file__).resolve().parents[3]
DESTINATIONS = {"pacs": "dimse", "ai": "dicomweb", "ris": "hl7", "ehr": "fhir"}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(folder: Path, secret: bool = True) -> Ruleset:
    return load_ruleset(folder, DESTINATIONS, has_secret=secret,
                        uid_prefix="1.2.826.0.1.3680043.8.498.")


def errors(folder: Path, secret: bool = True) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(folder, secret)
    return [str(p) for p in info.value.problems]


def line_of(path: Path, marker: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if marker in line:
            return n
    raise AssertionError(marker)


def test_every_problem_of_every_file_is_reported_with_file_line_and_path(tmp_path: Path
                                                                         ) -> None:
    a = write(tmp_path, "10-a.yaml", """\
        version: 1
        routes:
          - name: bad-keyword
            match: {attr: PatientNme, equals: x}
            destinations: [pacs]
          - name: bad-regex
            match: {attr: PatientID, regex: "(unclosed"}
            destinations: [pacs]
          - name: bad-destination
            destinations: [pacs, nowhere]
          - name: bad-profile
            destinations: [pacs]
            morph: [no-such-profile]
          - name: bad-trigger
            trigger: {on: instance, quiet_seconds: 30}
            destinations: [pacs]
          - name: short-wait
            trigger: {on: study, quiet_seconds: 120, max_wait_seconds: 60}
            destinations: [pacs]
          - name: wrong-kind
            trigger: order
            destinations: [pacs]  # wrong-kind
          - name: unknown-key
            destinaton: [pacs]
        """)
    b = write(tmp_path, "20-b.yaml", """\
        version: 1
        routes:
          - name: unsafe
            match: !!python/object/apply:os.system ["echo owned"]
        """)
    c = write(tmp_path, "morphs/p.yaml", """\
        version: 1
        profiles:
          keyed:
            - {op: uid_remap}
        """)
    found = errors(tmp_path, secret=False)
    expect = [
        (a, "PatientNme", "routes[0].match.attr", "unknown DICOM keyword 'PatientNme'"),
        (a, "(unclosed", "routes[1].match.regex", "invalid regex"),
        (a, "nowhere", "routes[2].destinations[1]", "unknown destination 'nowhere'"),
        (a, "no-such-profile", "routes[3].morph[0]", "unknown morph profile"),
        (a, "quiet_seconds: 30", "routes[4].trigger.quiet_seconds", "impossible trigger"),
        (a, "max_wait_seconds: 60", "routes[5].trigger.max_wait_seconds", "impossible trigger"),
        (a, "# wrong-kind", "routes[6].destinations[0]", "impossible route"),
        (a, "destinaton", "routes[7].destinaton", "unknown key"),
        (b, "!!python", "", "invalid YAML"),
        (c, "uid_remap", "profiles.keyed[0]", "routing.secret"),
    ]
    for path, marker, key_path, message in expect:
        prefix = f"{path}:{line_of(path, marker)}: {key_path or '<root>'}: "
        assert any(p.startswith(prefix) and message in p for p in found), (prefix, found)
    assert len(found) == len(expect)


def test_check_config_prints_route_problems_and_exits_1(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("RADFLOW_"):
            monkeypatch.delenv(name)
    routes = tmp_path / "routes"
    write(routes, "10.yaml", """\
        version: 1
        routes:
          - name: r
            match: {attr: Modality, regex: "(a"}
            destinations: [missing]
        """)
    config = tmp_path / "radflow.yaml"
    config.write_text(f"routing: {{routes_dir: {routes}}}\n", encoding="utf-8")
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "2 configuration error(s)" in err
    assert f"{routes / '10.yaml'}:4: routes[0].match.regex: invalid regex" in err
    assert f"{routes / '10.yaml'}:5: routes[0].destinations[0]: unknown destination" in err


def test_the_shipped_routes_load_with_the_shipped_config(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.chdir(REPO)
    for name in list(__import__("os").environ):
        if name.startswith("RADFLOW_"):
            monkeypatch.delenv(name)
    assert main(["check-config", "--config", "config/radflow.yaml"]) == 0
    # Only routes to destinations that something on this machine starts: discard, pacs
    assert "2 routes" in capsys.readouterr().out


def test_the_example_routes_load_with_the_commented_example_destinations(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples a site copies stay valid: the config's commented destinations, uncommented,
    and routes/examples/ copied into routes/, pass check-config."""
    for name in list(__import__("os").environ):
        if name.startswith("RADFLOW_"):
            monkeypatch.delenv(name)
    shutil.copytree(REPO / "routes", tmp_path / "routes")
    examples = sorted((tmp_path / "routes" / "examples").glob("*.yaml"))
    for example in examples:
        example.rename(tmp_path / "routes" / example.name)
    lines = (REPO / "config" / "radflow.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # Examples:"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    # two lines of prose, then YAML behind "# " up to the blank line
    block = [line.replace("  # ", "  ", 1) for line in lines[start + 2:end]]
    first = next(i for i, line in enumerate(lines) if line.startswith("destinations:"))
    config = tmp_path / "config" / "radflow.yaml"
    config.parent.mkdir()
    config.write_text("\n".join([*lines[:start], *block, *lines[end:]]) + "\n",
                      encoding="utf-8")
    assert first < start
    assert main(["check-config", "--config", str(config)]) == 0, capsys.readouterr().err
    assert f"{2 + len(examples)} routes" in capsys.readouterr().out


def test_profiles_compose_and_cycles_are_found(tmp_path: Path) -> None:
    write(tmp_path, "morphs/p.yaml", """\
        version: 1
        profiles:
          base: [{op: delete, private: true}]
          more: [base, {op: set, attr: StudyID, value: X}]
          loop-a: [loop-b]
          loop-b: [loop-a]
        """)
    found = errors(tmp_path)
    assert any("uses itself" in p for p in found)
    (tmp_path / "morphs/p.yaml").write_text(textwrap.dedent("""\
        version: 1
        profiles:
          base: [{op: delete, private: true}]
          more: [base, {op: set, attr: StudyID, value: X}]
        """))
    write(tmp_path, "10.yaml", """\
        version: 1
        routes:
          - {name: r, destinations: [pacs], morph: [more, {op: set, attr: StationName, value: S}]}
        """)
    rs = load(tmp_path)
    assert [s.op for s in rs.routes[0].morph] == ["delete", "set", "set"]
    assert rs.routes[0].morph_labels == ("more", "inline set")


def test_other_folders_and_duplicate_names(tmp_path: Path) -> None:
    write(tmp_path, "worklist/hl7-mwl.yaml", "not: [a route file")  # another part's folder
    write(tmp_path, "10.yaml", "version: 1\nroutes: [{name: r, destinations: [pacs]}]\n")
    write(tmp_path, "20.yaml", "version: 1\nroutes: [{name: r, destinations: [pacs]}]\n")
    found = errors(tmp_path)
    assert len(found) == 1 and "also defined at" in found[0]


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    assert "does not exist" in errors(tmp_path / "nope")[0]


# --- evaluation semantics ------------------------------------------------------------------


def subject(**fields: object) -> DicomSubject:
    ds = dicomgen.new_dataset("CT")
    for key, value in fields.items():
        setattr(ds, key, value)
    return DicomSubject(ds, RoutingContext(calling_ae="CT_1", now=dt.datetime(2026, 1, 5, 9)))


RULES = """\
    version: 1
    routes:
      - {name: discard-qa, match: {attr: PatientID, regex: "^QA"}, destinations: [], stop: true}
      - {name: ct-to-pacs, match: {attr: Modality, equals: CT}, destinations: [pacs]}
      - name: ct-to-ai
        trigger: {on: study, quiet_seconds: 5}
        match: {attr: Modality, equals: CT}
        destinations: [ai]
      - {name: mr-only, match: {attr: Modality, equals: MR}, destinations: [pacs], stop: true}
      - {name: after-stop, destinations: [pacs]}
      - {name: orders, trigger: order, destinations: [ris]}
      - {name: fallback, fallback: true, match: {attr: Modality, equals: US}, destinations: [pacs]}
      - {name: disabled, enabled: false, destinations: [pacs]}
    """


def test_fan_out_stop_fallback_and_unmatched(tmp_path: Path) -> None:
    write(tmp_path, "10.yaml", RULES)
    rs = load(tmp_path)
    ct = rs.evaluate("dicom", subject())
    assert [d.route for d in ct] == ["ct-to-pacs", "ct-to-ai", "after-stop"]
    assert ct[1].trigger.level == "study" and ct[1].trigger.quiet_seconds == 5
    assert ct[1].trigger.max_wait_seconds == 3600
    mr = rs.evaluate("dicom", subject(Modality="MR"))
    assert [d.route for d in mr] == ["mr-only"]  # stop: after-stop is never looked at
    qa = rs.evaluate("dicom", subject(PatientID="QA-1"))
    assert [d.route for d in qa] == ["discard-qa"] and qa[0].discard
    # after-stop matches everything, so the fallback never runs for DICOM here; without it:
    without = RULES.replace("      - {name: after-stop, destinations: [pacs]}\n", "")
    write(tmp_path, "10.yaml", without)
    rs = load(tmp_path)
    assert [d.route for d in rs.evaluate("dicom", subject(Modality="US"))] == ["fallback"]
    assert rs.evaluate("dicom", subject(Modality="XA")) == []  # unmatched


def test_explain_traces_every_route(tmp_path: Path) -> None:
    write(tmp_path, "10.yaml", RULES)
    rs = load(tmp_path)
    decisions, traces = rs.explain("dicom", subject(Modality="MR"))
    notes = {t.route.name: (t.considered, t.matched, t.note) for t in traces}
    assert notes["mr-only"] == (True, True, "")
    assert notes["after-stop"][2] == "after stop in mr-only"
    assert "does not apply" in notes["orders"][2]
    assert notes["disabled"][2] == "disabled"
    assert notes["fallback"][2].startswith("fallback: another route matched")
    assert [d.route for d in decisions] == ["mr-only"]


def test_trigger_compatibility(tmp_path: Path) -> None:
    write(tmp_path, "10.yaml", """\
        version: 1
        routes:
          - {name: a, trigger: order, match: {attr: Modality, equals: CT}, destinations: [ris]}
          - {name: b, match: {hl7: PID-3, equals: x}, destinations: [pacs]}
          - {name: c, trigger: order, destinations: [ris], morph: [{op: delete, private: true}]}
          - {name: d, trigger: study, destinations: [ehr]}
          - {name: e, destinations: [pacs]}
          - {name: f, destinations: [pacs, pacs]}
          - {name: g, trigger: weekly, destinations: [pacs]}
        """)
    found = errors(tmp_path)
    assert any("routes[0].match" in p and "use hl7" in p for p in found)
    assert any("routes[1].match" in p and "hl7: paths apply to order" in p for p in found)
    assert any("routes[2].morph" in p for p in found)
    assert any("routes[6].trigger.on" in p for p in found)
    assert any("listed twice" in p for p in found)
    assert not any("routes[3]" in p for p in found)  # a study may go to FHIR
