"""Settings: defaults, the shipped file, every error at once with file, line and key path,
environment overrides, and ``radflow check-config``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.settings import (
    DEFAULT_TRANSFER_SYNTAXES,
    Settings,
    SettingsError,
    SettingsProblem,
    load_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "config" / "radflow.yaml"


def write(tmp_path: Path, text: str, name: str = "radflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, marker: str) -> int:
    """The 1-based line of ``path`` whose comment is ``# marker``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no line marked {marker!r}")


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[SettingsProblem]:
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def by_path(problems: list[SettingsProblem]) -> dict[str, SettingsProblem]:
    found = {p.path: p for p in problems}
    assert len(found) == len(problems), problems
    return found


# --- good files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path, text: str) -> None:
    settings = load_settings(write(tmp_path, text), {})
    assert settings == Settings()
    [listener] = settings.dicom.listeners
    assert (listener.ae_title, listener.port) == ("RADFLOW", 11112)
    assert listener.transfer_syntaxes == list(DEFAULT_TRANSFER_SYNTAXES)
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.dicom.duplicate_policy == "version"
    assert str(settings.storage.sqlite_path).startswith("var")
    assert str(settings.storage.spool_dir).startswith("var")


def test_the_shipped_config_validates_with_the_contract_defaults() -> None:
    settings = load_settings(SHIPPED_CONFIG, {})
    [listener] = settings.dicom.listeners
    assert (listener.ae_title, listener.port) == ("RADFLOW", 11112)
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.http.token is None


def test_values_are_normalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - ae_title: "  PACS_IN  "
              allowed_calling:
                - ae_title: CT_1
                  host: 10.20.0.0/24
                - ae_title: MR_1
                  host: 10.20.1.5
        http:
          token: hunter2
    """,
    )
    settings = load_settings(path, {})
    listener = settings.dicom.listeners[0]
    assert listener.ae_title == "PACS_IN"
    assert [p.host for p in listener.allowed_calling] == ["10.20.0.0/24", "10.20.1.5"]
    assert settings.http.token is not None
    assert "hunter2" not in repr(settings)  # a secret never shows in logs or reprs


# --- every error at once -------------------------------------------------------------------------
MANY_ERRORS = r"""
site:
  name: test
  colour: blue                       # site.colour
dicom:
  listeners:
    - name: main
      ae_title: 'BAD\AE'             # ae_title
      port: 70000                    # port
      transfer_syntaxes:
        - 1.2.840.10008.1.2.1
        - 1.2.840.10008.01.2         # uid
      allowed_calling:
        - ae_title: CT_1
          host: not-a-network        # host
          colour: red                # peer.colour
      colour: green                  # listener.colour
    - ae_title: THIS_IS_SEVENTEEN    # long_ae
      port: 0                        # port_zero
storage:
  min_free_mb: -5                    # min_free
bogus: 1                             # bogus
"""


def test_every_problem_is_reported_at_once_with_file_line_and_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, MANY_ERRORS)
    problems = by_path(problems_of(path))

    expected = {
        "site.colour": "site.colour",
        "dicom.listeners[0].ae_title": "ae_title",
        "dicom.listeners[0].port": "port",
        "dicom.listeners[0].transfer_syntaxes[1]": "uid",
        "dicom.listeners[0].allowed_calling[0].host": "host",
        "dicom.listeners[0].allowed_calling[0].colour": "peer.colour",
        "dicom.listeners[0].colour": "listener.colour",
        "dicom.listeners[1].ae_title": "long_ae",
        "dicom.listeners[1].port": "port_zero",
        "storage.min_free_mb": "min_free",
        "bogus": "bogus",
    }
    assert set(problems) == set(expected)
    for key_path, marker in expected.items():
        problem = problems[key_path]
        assert problem.source == str(path)
        assert problem.line == line_of(path, marker), key_path
    for unknown in (
        "site.colour",
        "dicom.listeners[0].colour",
        "dicom.listeners[0].allowed_calling[0].colour",
        "bogus",
    ):
        assert problems[unknown].message == "unknown key"
    assert "AE title" in problems["dicom.listeners[0].ae_title"].message
    assert "1.2.840.10008.01.2" in problems["dicom.listeners[0].transfer_syntaxes[1]"].message
    assert "not-a-network" in problems["dicom.listeners[0].allowed_calling[0].host"].message
    assert "65535" in problems["dicom.listeners[0].port"].message


def test_the_error_text_names_file_line_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 99999\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, {})
    assert str(info.value).startswith(f"{path}:2: http.port: ")


def test_duplicate_listener_ports_are_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - name: a
              port: 11112
            - name: b
              port: 11113
            - name: c
              port: 11112                # dup
    """,
    )
    [problem] = problems_of(path)
    assert problem.path == "dicom.listeners[2].port"
    assert problem.line == line_of(path, "dup")
    assert "11112" in problem.message and "dicom.listeners[0]" in problem.message


def test_a_certificate_pin_needs_client_certificates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - name: main                  # listener
              allowed_calling:
                - {ae_title: CT1, certificate: ct1.hospital.example}
    """,
    )
    [problem] = problems_of(path)
    assert problem.path == "dicom.listeners[0]"
    assert "client_ca_file" in problem.message


def test_a_listener_is_closed_unless_opened_explicitly(tmp_path: Path) -> None:
    [listener] = load_settings(write(tmp_path, ""), {}).dicom.listeners
    assert listener.allowed_calling == [] and listener.accept_any_calling is False
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - name: main                  # listener
              accept_any_calling: true
              allowed_calling: [{ae_title: CT1}]
    """,
    )
    [problem] = problems_of(path)
    assert problem.path == "dicom.listeners[0]"
    assert "accept_any_calling" in problem.message


def test_a_duplicate_port_from_defaults_still_has_a_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - name: a
            - name: b                    # second
    """,
    )
    [problem] = problems_of(path)
    assert problem.path == "dicom.listeners[1].port"
    assert problem.line == line_of(path, "second")


def test_a_wildcard_listener_clashes_with_a_specific_address_on_its_port(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dicom:
          listeners:
            - name: a
              host: 0.0.0.0
            - name: b
              host: 127.0.0.1
    """,
    )
    assert problems_of(path)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("site:\n  name: x\nhttp:\n  port: 8080\n    host: y\n", 5),
        ("dicom:\n  listeners:\n    - name: a\n   - name: b\n", 4),
        ("http: [1, 2\n", 2),
        ("site:\n\tname: tab\n", 2),
    ],
)
def test_invalid_yaml_reports_its_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    [problem] = problems_of(path)
    assert problem.source == str(path)
    assert problem.line == line
    assert problem.message.startswith("invalid YAML")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    [problem] = problems_of(write(tmp_path, text))
    assert "mapping" in problem.message


def test_a_missing_file_is_one_problem(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path / "nope.yaml")
    assert problem.source == str(tmp_path / "nope.yaml")
    assert "cannot read" in problem.message


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "site:\n  name: !!python/object/apply:os.getcwd []\n")
    [problem] = problems_of(path)
    assert problem.line == 2


# --- environment ---------------------------------------------------------------------------------
def test_environment_overrides_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, SHIPPED_CONFIG.read_text())
    settings = load_settings(
        path,
        {
            "RADFLOW_HTTP__PORT": "8081",
            "RADFLOW_DICOM__LISTENERS__0__PORT": "104",
            "RADFLOW_DICOM__DUPLICATE_POLICY": "reject",
            "RADFLOW_DICOM__STORE_TIMEOUT": "2.5",
            "RADFLOW_HTTP__ENABLED": "false",
            "RADFLOW_UNRELATED": "ignored: no double underscore",
            "PATH": "/usr/bin",
        },
    )
    assert settings.http.port == 8081
    assert settings.dicom.listeners[0].port == 104
    assert settings.dicom.listeners[0].ae_title == "RADFLOW"  # the rest of the item is kept
    assert settings.dicom.duplicate_policy == "reject"
    assert settings.dicom.store_timeout == 2.5
    assert settings.http.enabled is False


def test_environment_builds_missing_sections_and_list_items(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, ""),
        {
            "RADFLOW_DICOM__LISTENERS__0__PORT": "1104",
            "RADFLOW_DICOM__LISTENERS__0__ALLOWED_CALLING": "[{ae_title: CT_1, host: 10.0.0.0/8}]",
        },
    )
    [listener] = settings.dicom.listeners
    assert listener.port == 1104
    assert [(p.ae_title, p.host) for p in listener.allowed_calling] == [("CT_1", "10.0.0.0/8")]


@pytest.mark.parametrize(
    ("name", "value", "attr"),
    [
        ("RADFLOW_HTTP__TOKEN", "123456", lambda s: s.http.token.get_secret_value()),
        ("RADFLOW_SITE__NAME", "2024", lambda s: s.site.name),
        ("RADFLOW_DICOM__LISTENERS__0__AE_TITLE", "1234", lambda s: s.dicom.listeners[0].ae_title),
        ("RADFLOW_HTTP__TOKEN", "null", lambda s: s.http.token.get_secret_value()),
        ("RADFLOW_HTTP__TOKEN", "yes", lambda s: s.http.token.get_secret_value()),
    ],
)
def test_string_settings_take_the_environment_value_literally(
    tmp_path: Path, name: str, value: str, attr: object
) -> None:
    settings = load_settings(write(tmp_path, ""), {name: value})
    assert attr(settings) == value  # type: ignore[operator]


def test_a_wrong_environment_key_is_an_error_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n")
    problems = by_path(
        problems_of(
            path,
            {
                "RADFLOW_HTTP__COLOUR": "red",
                "RADFLOW_NOSUCHSECTION__KEY": "1",
                "RADFLOW_HTTP__PORT__DEEPER": "1",
            },
        )
    )
    assert set(problems) == {"http.colour", "nosuchsection", "http.port.deeper"}
    for problem in problems.values():
        assert problem.source == "environment"
        assert problem.line is None
    assert problems["http.colour"].message == "unknown key"
    assert "RADFLOW_HTTP__PORT__DEEPER" in problems["http.port.deeper"].message
    assert str(problems["http.colour"]).startswith("environment: http.colour: ")


def test_a_bad_environment_value_is_blamed_on_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n")
    [problem] = problems_of(path, {"RADFLOW_HTTP__PORT": "99999"})
    assert (problem.source, problem.line, problem.path) == ("environment", None, "http.port")


def test_file_and_environment_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 99999\n")
    problems = by_path(problems_of(path, {"RADFLOW_SITE__COLOUR": "x"}))
    assert problems["http.port"].source == str(path)
    assert problems["site.colour"].source == "environment"


# --- radflow check-config ------------------------------------------------------------------------
@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("RADFLOW_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_check_config_prints_every_error_and_exits_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
) -> None:
    path = write(tmp_path, MANY_ERRORS)
    assert main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "11 configuration error(s)" in err
    for marker, key_path in [
        ("site.colour", "site.colour"),
        ("port", "dicom.listeners[0].port"),
        ("uid", "dicom.listeners[0].transfer_syntaxes[1]"),
        ("bogus", "bogus"),
    ]:
        assert f"{path}:{line_of(path, marker)}: {key_path}: " in err


def test_check_config_reports_environment_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("RADFLOW_HTTP__PORT", "not-a-port")
    assert main(["check-config", "--config", str(write(tmp_path, ""))]) == 1
    assert "environment: http.port: " in capsys.readouterr().err


def test_check_config_accepts_a_good_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
) -> None:
    assert main(["check-config", "--config", str(SHIPPED_CONFIG)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "OK" in out and "RADFLOW@0.0.0.0:11112" in out


def test_check_config_applies_environment_overrides(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("RADFLOW_DICOM__LISTENERS__0__PORT", "104")
    # An empty config has no destinations: point routing at an empty folder, not routes/.
    clean_environment.setenv("RADFLOW_ROUTING__ROUTES_DIR", str(tmp_path))
    assert main(["check-config", "--config", str(write(tmp_path, ""))]) == 0
    out, err = capsys.readouterr()
    assert "RADFLOW@0.0.0.0:104" in out
    # Valid, but nobody could connect: said plainly.
    assert "listener 'main' accepts no calling AE" in err


# --- relative paths ------------------------------------------------------------------------------
def test_relative_paths_in_the_file_resolve_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "etc" / "radflow"
    site.mkdir(parents=True)
    config = write(site, """
        storage: {sqlite_path: data/radflow.db, spool_dir: ../spool}
        dicom:
          listeners:
            - tls: {cert_file: tls/radflow.pem, key_file: /abs/radflow.key, client_ca_file: ca.pem}
        worklist: {mapping_file: routes/worklist/hl7-mwl.yaml}
        routing: {routes_dir: routes}
        destinations:
          pacs: {type: dimse, ae_title: PACS, host: 127.0.0.1, port: 104,
                 tls: {ca_file: tls/site-ca.pem}}
          ehr: {type: fhir, base_url: "https://ehr.example/fhir", ca_file: tls/site-ca.pem}
        """)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    settings = load_settings(config, {})
    assert settings.storage.sqlite_path == site / "data" / "radflow.db"
    assert settings.storage.spool_dir == tmp_path / "etc" / "spool"
    tls = settings.dicom.listeners[0].tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        site / "tls" / "radflow.pem", Path("/abs/radflow.key"), site / "ca.pem")
    assert settings.worklist.mapping_file == site / "routes" / "worklist" / "hl7-mwl.yaml"
    assert settings.routing.routes_dir == site / "routes"
    pacs, ehr = settings.destinations["pacs"], settings.destinations["ehr"]
    assert pacs.tls is not None and pacs.tls.ca_file == site / "tls" / "site-ca.pem"  # type: ignore[union-attr]
    assert ehr.ca_file == site / "tls" / "site-ca.pem"  # type: ignore[union-attr]


def test_defaults_and_environment_paths_stay_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, "storage: {min_free_mb: 1}\n")
    settings = load_settings(config, {"RADFLOW_STORAGE__SPOOL_DIR": "spool-from-env"})
    assert settings.storage.sqlite_path == Path("var/radflow.db")  # the default, as documented
    assert settings.storage.spool_dir == Path("spool-from-env")    # as typed at the shell


def test_the_shipped_config_checks_from_any_working_directory(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.chdir(tmp_path)
    assert main(["check-config", "--config", str(SHIPPED_CONFIG)]) == 0
    settings = load_settings(SHIPPED_CONFIG, {})
    assert settings.storage.sqlite_path == REPO_ROOT / "var" / "radflow.db"
    assert settings.storage.spool_dir == REPO_ROOT / "var" / "spool"
    assert settings.routing.routes_dir == REPO_ROOT / "routes"
    assert settings.worklist.mapping_file == REPO_ROOT / "routes" / "worklist" / "hl7-mwl.yaml"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "radflow.example.org"])
def test_admin_api_beyond_loopback_without_a_token_is_a_configuration_error(
        tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f"http:\n  host: '{host}'\n")
    [problem] = problems_of(path, {})
    assert problem.path == "http"
    assert "without a token" in problem.message and "http.token" in problem.message
    assert load_settings(path, {"RADFLOW_HTTP__TOKEN": "s3cret"}).http.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_admin_api_on_loopback_needs_no_token(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f"http:\n  host: '{host}'\n")
    assert load_settings(path, {}).http.token is None


def test_the_takeover_time_is_a_setting_within_bounds(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "engine:\n  takeover_seconds: 30\n"), {})
    assert settings.engine.takeover_seconds == 30
    assert load_settings(write(tmp_path, "site: {name: x}\n", "b.yaml"),
                         {}).engine.takeover_seconds == 10
    [problem] = problems_of(write(tmp_path, "engine:\n  takeover_seconds: 0.1\n", "c.yaml"))
    assert problem.path == "engine.takeover_seconds"
