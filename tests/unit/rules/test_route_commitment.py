"""Storage Commitment policy per route and per calling AE: what check-config refuses, how the
routes that matched an instance combine, and how a request's instances are decided."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.durable.commitment import (
    CommitmentPlan,
    CommitmentRequest,
    HeldInstance,
    decide,
    decode_route_archives,
    encode_route_archives,
    next_ask,
)
from engine.rules.loader import load_ruleset
from engine.rules.ruleset import Decision, RouteCommitment, Ruleset, Trigger, commitment_of
from engine.settings import CommitmentSettings, Settings, SettingsError

DESTINATIONS = {"pacs": "dimse", "vna": "dicomweb", "ris": "hl7", "ehr": "fhir"}
CT = "1.2.840.10008.5.1.4.1.1.2"


def _load(folder: Path, text: str) -> Ruleset:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "10.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_ruleset(folder, DESTINATIONS, has_secret=True, uid_prefix="1.2.3.")


def test_route_commitment_forms(tmp_path: Path) -> None:
    ruleset = _load(tmp_path / "r", """\
        version: 1
        routes:
          - name: archived
            trigger: study
            destinations: [pacs, vna, ehr]
            commitment: on_archive
          - name: named
            destinations: [pacs, vna]
            commitment: {policy: on_archive, archive: [vna]}
          - name: local
            destinations: [pacs]
            commitment: on_receipt
          - name: silent
            destinations: [pacs]
        """)
    by_name = {r.name: r.commitment for r in ruleset.routes}
    assert by_name == {"archived": RouteCommitment("on_archive", ("pacs", "vna")),
                       "named": RouteCommitment("on_archive", ("vna",)),
                       "local": RouteCommitment("on_receipt"), "silent": None}
    assert ruleset.has_commitment


def test_route_commitment_problems_are_reported_with_their_path(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        _load(tmp_path / "r", """\
            version: 1
            routes:
              - name: a
                destinations: [pacs]
                commitment: always
              - name: b
                trigger: study
                destinations: [pacs, ehr]
                commitment: {policy: on_archive, archive: [ehr, vna]}
              - name: c
                trigger: study
                destinations: [ehr]
                commitment: on_archive
              - name: d
                stop: true
                commitment: on_receipt
              - name: e
                trigger: order
                destinations: [ris]
                commitment: on_receipt
              - name: f
                destinations: [pacs]
                commitment: {policy: on_receipt, archive: [pacs]}
            """)
    problems = {p.path: p.message for p in info.value.problems}
    assert "routes[0].commitment.policy" in problems
    assert "fhir destination" in problems["routes[1].commitment.archive[0]"]
    assert "not one of this route's destinations" in problems["routes[1].commitment.archive[1]"]
    assert "none of this route's destinations" in problems["routes[2].commitment"]
    assert "discard route" in problems["routes[3].commitment"]
    assert "a order route has none" in problems["routes[4].commitment"]
    assert "applies to policy on_archive" in problems["routes[5].commitment.archive"]
    assert all(p.line for p in info.value.problems)


def test_site_and_modality_on_archive_need_an_archive() -> None:
    with pytest.raises(ValueError, match=r"CT_1.*archive_destinations is empty"):
        Settings.model_validate({"commitment": {"modalities": [
            {"ae_title": "CT_1", "policy": "on_archive"}]}})
    with pytest.raises(ValueError, match="must be dimse or dicomweb"):
        Settings.model_validate({
            "destinations": {"ris": {"type": "hl7", "host": "h", "port": 1}},
            "commitment": {"policy": "on_archive", "archive_destinations": ["ris"]}})


def test_precedence_calling_ae_then_routes_then_site() -> None:
    cs = CommitmentSettings.model_validate({"policy": "on_receipt", "modalities": [
        {"ae_title": "CT_1", "policy": "on_archive"}, {"ae_title": "MR_1"}]})
    assert cs.policy_for("CT_1", routes_say=True) == "on_archive"
    assert cs.policy_for("MR_1", routes_say=True) == "by_route"
    assert cs.policy_for("MR_1", routes_say=False) == "on_receipt"


def _decision(name: str, commitment: RouteCommitment | None) -> Decision:
    return Decision(name, Trigger("instance"), ("pacs",), (), False, False, commitment)


def test_matched_routes_combine_strictest_first() -> None:
    assert commitment_of([_decision("a", None)]) is None
    assert commitment_of([_decision("a", RouteCommitment("on_receipt")),
                          _decision("b", None)]) == RouteCommitment("on_receipt")
    assert commitment_of([
        _decision("a", RouteCommitment("on_receipt")),
        _decision("b", RouteCommitment("on_archive", ("pacs",))),
        _decision("c", RouteCommitment("on_archive", ("vna", "pacs")))]) \
        == RouteCommitment("on_archive", ("pacs", "vna"))
    assert decode_route_archives(encode_route_archives(("pacs",))) == ("pacs",)
    assert decode_route_archives(encode_route_archives(())) == ()
    assert decode_route_archives(encode_route_archives(None)) is None


def test_by_route_decides_each_instance_as_its_routes_asked() -> None:
    uids = [f"1.2.3.{i}" for i in range(6)]
    request = CommitmentRequest("9.9", "MOD", "by_route", tuple((CT, u) for u in uids), "t")
    journal = {
        uids[0]: HeldInstance(CT, 1, True, ("pacs",)),  # archived route, delivered
        uids[1]: HeldInstance(CT, 2, True, ()),  # on_receipt route
        uids[2]: HeldInstance(CT, 3, True, None),  # no route said: the site's on_receipt
        uids[3]: HeldInstance(CT, 4, True, ("pacs", "vna")),  # vna not yet
        uids[4]: HeldInstance(CT, 5, False, None),  # not routed yet
    }  # uids[5] never received
    plan = CommitmentPlan("on_receipt", ("vna",))
    confirmed = {(1, "pacs"), (4, "pacs")}
    assert decide(request, journal, confirmed, False, plan) is None  # 3 and 4 still wait
    report = decide(request, journal, confirmed, True, plan)
    assert report is not None
    assert {u for _, u in report.success} == set(uids[:3])
    assert {u: r for _, u, r in report.failed} == {uids[3]: 0x0110, uids[4]: 0x0110,
                                                   uids[5]: 0x0112}
    # The site's on_archive applies where no route said anything.
    site = CommitmentPlan("on_archive", ("vna",))
    assert site.archives_for("by_route", journal[uids[2]]) == ("vna",)
    assert site.archives_for("on_receipt", journal[uids[3]]) == ()
    assert site.archives_for("on_archive", journal[uids[1]]) == ("vna",)


def test_an_archive_is_asked_by_one_process() -> None:
    claimed = next_ask({}, "9.1", False, 100.0, 60.0)
    assert claimed is not None and claimed["claimed_at"] == 100.0
    assert next_ask(claimed, "9.1", False, 130.0, 60.0) is None  # another process: fresh claim
    assert next_ask(claimed, "9.1", False, 161.0, 60.0) is not None  # stale: claimable again
    sent = next_ask(claimed, "9.1", True, 101.0, 0.0)
    assert sent is not None and sent["sent"]
    assert next_ask(sent, "9.1", False, 500.0, 60.0) is None  # asked already
    given_back = next_ask(claimed, "9.1", False, 0.0, 0.0)  # a failed ask gives it back
    assert given_back is not None and next_ask(given_back, "9.1", False, 102.0, 60.0)


def test_dry_run_shows_what_the_matched_routes_ask(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from engine.cli import main
    from tests.helpers.dicomgen import write_instance

    for name in [n for n in __import__("os").environ if n.startswith("RADFLOW_")]:
        monkeypatch.delenv(name)
    routes = tmp_path / "routes"
    routes.mkdir()
    (routes / "10.yaml").write_text(textwrap.dedent("""\
        version: 1
        routes:
          - name: ct-archived
            match: {attr: Modality, equals: CT}
            destinations: [pacs, vna]
            commitment: {policy: on_archive, archive: [pacs]}
          - name: copy
            destinations: [vna]
        """))
    config = tmp_path / "radflow.yaml"
    config.write_text(textwrap.dedent(f"""\
        routing: {{routes_dir: {routes}}}
        destinations:
          pacs: {{type: dimse, ae_title: PACS, host: 127.0.0.1, port: 104}}
          vna: {{type: dicomweb, url: "http://127.0.0.1:8042/dicom-web"}}
        """))
    ct = write_instance(tmp_path / "in", modality="CT")
    assert main(["rules", "test", "--config", str(config), str(ct.path)]) == 0
    assert "Storage Commitment: on_archive (pacs)" in capsys.readouterr().out
    assert main(["rules", "test", "--json", "--config", str(config), str(ct.path)]) == 0
    run = json.loads(capsys.readouterr().out)
    run = run[0] if isinstance(run, list) else run
    assert {d["route"]: d["commitment"] for d in run["decisions"]} == {
        "ct-archived": "on_archive (pacs)", "copy": None}
    mr = write_instance(tmp_path / "in", modality="MR")
    assert main(["rules", "test", "--config", str(config), str(mr.path)]) == 0
    assert "Storage Commitment" not in capsys.readouterr().out
