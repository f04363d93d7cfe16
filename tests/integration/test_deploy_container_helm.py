"""The container image definition, the two-node compose site and the Helm chart, tested as far
as a machine without a container engine, registry access or helm allows:

* the Containerfile is parsed (dockerfile-parse): non-root user, volumes, ports, health check,
  entry point; its final stage's file tree is built from the repository the way COPY would,
  and radflow is started from that tree with the image's own config (only storage paths and
  ports moved by environment variables, as an operator would), answers /readyz, passes the
  image's health-check script and stops cleanly on SIGTERM;
* the compose file is parsed and cross-checked against the image (mount targets, ports), and
  its site config passes ``radflow check-config`` inside the same file tree;
* the chart is rendered (tests/helpers/helm.py, or helm itself when installed), every core
  manifest is validated against the Kubernetes API schemas (kubernetes-validate), and the
  ServiceMonitor, ports, probes, volumes and the config in the ConfigMap are cross-checked.
Not exercised here: building the image, pulling base images, running the containers, and
installing the chart in a cluster (docs/deployment.md says so).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.helm import render_chart, render_with_helm
from tests.helpers.proc import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
CHART = DEPLOY / "helm" / "radflow"
K8S_VERSION = "1.30.0"

dockerfile_parse = pytest.importorskip("dockerfile_parse")


def check_config(config: Path, token: str | None = "a-token"
                 ) -> subprocess.CompletedProcess[str]:
    """``radflow check-config`` as the container runs it: the admin token from the
    environment (the image's config listens beyond loopback, which needs one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADFLOW_")}
    if token is not None:
        env["RADFLOW_HTTP__TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "engine", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=60, env=env)


# --- the image ----------------------------------------------------------------------------
def final_stage() -> list[tuple[str, str]]:
    parser = dockerfile_parse.DockerfileParser(fileobj=open(CONTAINERFILE, "rb"))  # noqa: SIM115
    stages: list[list[tuple[str, str]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages and item["instruction"] != "COMMENT":
            stages[-1].append((item["instruction"], item["value"]))
    assert len(stages) == 2, "a build stage and a run stage"
    return stages[-1]


def instruction(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [value for instr, value in stage if instr == name]


def image_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "container" / "radflow.yaml").read_text())


def build_tree(root: Path, config_file: Path | None = None) -> Path:
    """The final stage's files under ``root``, as COPY (from the repository root, the build
    context) would lay them; the virtual environment of the build stage is this test's."""
    for value in instruction(final_stage(), "COPY"):
        if value.startswith("--from="):
            continue
        *sources, dest = value.split()
        for source in sources:
            src, target = ROOT / source, root / dest.lstrip("/")
            assert src.exists(), f"COPY {source}: not in the repository"
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target)
            else:
                shutil.copy2(src, target)
    for volume in json.loads(instruction(final_stage(), "VOLUME")[0]):
        (root / volume.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if config_file is not None:
        shutil.copy2(config_file, root / "etc/radflow/radflow.yaml")
    return root / "etc/radflow/radflow.yaml"


def test_containerfile_user_volumes_ports_health_and_entrypoint() -> None:
    stage = final_stage()
    user = instruction(stage, "USER")[-1]
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit()
    volumes = json.loads(instruction(stage, "VOLUME")[0])
    assert volumes == ["/var/lib/radflow/spool", "/var/lib/radflow/state"]
    config = image_config()
    assert str(Path(config["storage"]["spool_dir"])).startswith(volumes[0])
    assert str(Path(config["storage"]["sqlite_path"])).startswith(volumes[1])
    exposed = {int(p) for p in instruction(stage, "EXPOSE")[0].split()}
    assert exposed == {config["dicom"]["listeners"][0]["port"],
                       config["hl7"]["listeners"][0]["port"], config["http"]["port"]}
    assert config["http"]["host"] == "0.0.0.0"  # probes come from outside the container
    health = instruction(stage, "HEALTHCHECK")[0]
    assert "healthcheck.py" in health and "/readyz" in (
        DEPLOY / "container" / "healthcheck.py").read_text()
    assert json.loads(instruction(stage, "ENTRYPOINT")[0]) == ["/opt/radflow/bin/radflow"]
    assert json.loads(instruction(stage, "CMD")[0]) == [
        "run", "--config", "/etc/radflow/radflow.yaml"]
    assert instruction(stage, "STOPSIGNAL") == ["SIGTERM"]


def test_image_tree_runs_radflow_with_its_own_config(tmp_path: Path) -> None:
    root = tmp_path / "image"
    config = build_tree(root)
    check = check_config(config)
    assert check.returncode == 0, check.stdout + check.stderr
    # closed by default: without a token the image's admin API would be open, so it refuses
    refused = check_config(config, token=None)
    assert refused.returncode == 1 and "http.token" in refused.stdout + refused.stderr

    http_port = free_port()
    env = dict(os.environ,
               # the volumes, inside this test's tree instead of at /var/lib/radflow
               RADFLOW_STORAGE__SQLITE_PATH=str(root / "var/lib/radflow/state/radflow.db"),
               RADFLOW_STORAGE__SPOOL_DIR=str(root / "var/lib/radflow/spool"),
               RADFLOW_STORAGE__MIN_FREE_MB="1",
               # loopback and free ports on a shared test machine
               RADFLOW_DICOM__LISTENERS__0__HOST=HOST,
               RADFLOW_DICOM__LISTENERS__0__PORT=str(free_port()),
               RADFLOW_HL7__LISTENERS__0__HOST=HOST,
               RADFLOW_HL7__LISTENERS__0__PORT=str(free_port()),
               RADFLOW_HTTP__HOST=HOST, RADFLOW_HTTP__PORT=str(http_port),
               RADFLOW_HTTP__TOKEN="container-test-token")
    health = [sys.executable, str(DEPLOY / "container" / "healthcheck.py")]
    assert subprocess.run(health, env=env, timeout=30).returncode == 1  # nothing listens yet
    log = (tmp_path / "radflow.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--config", str(config)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(health, env=env, timeout=30).returncode != 0:
            assert proc.poll() is None, (tmp_path / "radflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no /readyz 200 within 60 s"
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert (root / "var/lib/radflow/state/radflow.db").exists()


# --- compose --------------------------------------------------------------------------------
def test_compose_two_nodes_on_postgresql(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    nodes = [s for name, s in services.items() if name.startswith("radflow")]
    assert len(nodes) == 2 and "postgres" in services
    assert len({n["hostname"] for n in nodes}) == 2  # each node its own identity
    image_paths = {"/etc/radflow/radflow.yaml", "/var/lib/radflow/spool"}
    for node in nodes:
        assert node["build"]["dockerfile"] == "deploy/container/Containerfile"
        assert (DEPLOY / "compose" / node["build"]["context"]).resolve() == ROOT
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        targets = {v.split(":")[1] for v in node["volumes"]}
        assert image_paths <= targets
        assert "spool:/var/lib/radflow/spool" in node["volumes"]  # one spool, shared
    published = [p.rsplit(":", 2)[-2] for n in nodes for p in n["ports"]]
    assert len(published) == len(set(published))
    assert services["postgres"]["healthcheck"]["test"]
    assert compose["secrets"]["postgres_password"]["file"] == "./secrets/postgres_password"

    site = yaml.safe_load((DEPLOY / "compose" / "radflow.yaml").read_text())
    assert site["storage"]["backend"] == "postgresql"
    assert site["storage"]["postgresql"]["password_file"] == "/run/secrets/postgres_password"
    assert site["storage"]["spool_dir"] == "/var/lib/radflow/spool"

    root = tmp_path / "image"
    config = build_tree(root, DEPLOY / "compose" / "radflow.yaml")
    shutil.copytree(DEPLOY / "compose" / "routes", root / "etc/radflow/site-routes")
    check = check_config(config)
    assert check.returncode == 0, check.stdout + check.stderr


# --- Helm -----------------------------------------------------------------------------------
MULTI_NODE = {
    "replicas": 2,
    "config": {"storage": {"backend": "postgresql",
                           "postgresql": {"host": "postgres", "database": "radflow",
                                          "user": "radflow"}}},
    "persistence": {"spool": {"shared": True, "storageClass": "nfs"}},
    "env": {"RADFLOW_HTTP__TOKEN": "t", "RADFLOW_POSTGRESQL_PASSWORD": "p"},
    "routes": {"10-images-to-pacs.yaml": "version: 1\nroutes: []\n"},
    "tls": {"radflow.pem": "-----BEGIN CERTIFICATE-----\n"},
    "serviceMonitor": {"labels": {"release": "prometheus"}},
}


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.mark.parametrize("values", [{}, MULTI_NODE], ids=["default", "multi-node"])
def test_chart_renders_valid_kubernetes_manifests(values: dict[str, Any],
                                                  tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = render_chart(CHART, values)
    if not values:
        with_helm = render_with_helm(CHART)
        if with_helm is not None:  # the renderer and helm agree on the default values
            assert sorted(map(json.dumps, with_helm)) == sorted(map(json.dumps, docs))
    kinds = by_kind(docs)
    assert set(kinds) >= {"StatefulSet", "Service", "ConfigMap", "Secret", "ServiceMonitor"}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD: checked below
        kv.validate(doc, K8S_VERSION, strict=True)

    sts = kinds["StatefulSet"][0]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = yaml.safe_load(next(c for c in kinds["ConfigMap"]
                                 if c["metadata"]["name"].endswith("-config"))
                            ["data"]["radflow.yaml"])
    assert ports == {"dicom": config["dicom"]["listeners"][0]["port"],
                     "mllp": config["hl7"]["listeners"][0]["port"],
                     "http": config["http"]["port"]}
    for svc in kinds["Service"]:
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports
        assert svc["spec"]["selector"].items() <= \
            sts["spec"]["template"]["metadata"]["labels"].items()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    uid = int(instruction(final_stage(), "USER")[-1].split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"] for v in pod["volumes"]} | claims
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= volumes
    image_volumes = json.loads(instruction(final_stage(), "VOLUME")[0])
    assert set(image_volumes) <= set(mounts)
    assert mounts["/etc/radflow/radflow.yaml"] == "config"
    if values.get("persistence", {}).get("spool", {}).get("shared"):
        pvc = kinds["PersistentVolumeClaim"][0]
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert "spool" not in claims and sts["spec"]["replicas"] == 2
    else:
        assert "spool" in claims
    secret_names = {s["metadata"]["name"] for s in kinds["Secret"]}
    assert container["envFrom"][0]["secretRef"]["name"] in secret_names

    monitor = kinds["ServiceMonitor"][0]
    selected = [s for s in kinds["Service"] if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    assert len(selected) == 1 and selected[0]["spec"]["clusterIP"] == "None"
    assert monitor["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in selected[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    # the ConfigMap's config and routes pass check-config in the image's file tree
    root = tmp_path / "image"
    config_file = build_tree(root)
    routes_dir = root / "etc/radflow/site-routes"
    routes_dir.mkdir()
    for cm in kinds["ConfigMap"]:
        if cm["metadata"]["name"].endswith("-routes"):
            for name, text in (cm.get("data") or {}).items():
                (routes_dir / name).write_text(text)
    config_file.write_text(yaml.safe_dump(config))
    check = check_config(config_file)
    assert check.returncode == 0, check.stdout + check.stderr
