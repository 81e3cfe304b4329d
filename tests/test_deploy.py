"""The deployment files in ``deploy/``, the Dockerfile and docker-compose.yml, checked statically.

Nothing here can run containers or a Kubernetes cluster, so every manifest is parsed and every piece of it that
names letsfrag is checked against the real thing: each container's arguments parse with letsfrag's own CLI
parser, each embedded config loads with letsfrag's config loader, probes and ports match ``metrics.listen``,
grace periods cover ``limits.stop_timeout``. The systemd units must score an exposure of at most 4.0 in
``systemd-analyze security`` where that tool exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from letsfrag.cli.main import build_parser, resolve_config
from letsfrag.config import load_broker_config, load_host_config
from letsfrag.units import parse_listen

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
#: what the Secret and the downward API give the containers
ENV = {"BOT_TOKEN": "t0ken", "LETSFRAG_SECRET": "s3cret", "REDIS_PASSWORD": "pw", "POD_NAME": "letsfrag-host-0",
       "HOST_ID": "host-a"}
MAX_EXPOSURE = 4.0


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, doc in _documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec:
            for container in spec["containers"]:
                yield name, doc, container


def _configmap() -> dict[str, str]:
    maps = [doc for _, doc in _documents() if doc["kind"] == "ConfigMap"]
    assert len(maps) == 1
    return dict(maps[0]["data"])


def _load(kind: str, text: str, tmp_path: Path) -> Any:
    path = tmp_path / f"{kind}.yaml"
    # the image's /app holds the example bot: here, that is this checkout
    path.write_text(text.replace("cwd: /app", f"cwd: {ROOT}").replace("dir: /app/logs", f"dir: {tmp_path}/logs"))
    loader = load_broker_config if kind == "broker" else load_host_config
    return loader(path, env=ENV)


def _parse_cli(args: list[str]) -> Any:
    """Parse ``args`` as the container's ENTRYPOINT (``letsfrag --log-format json``) would get them."""
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: ENV[m.group(1)], arg) for arg in args]
    try:
        parsed = build_parser().parse_args(["--log-format", "json", *expanded])
        parsed.config = resolve_config(parsed)
    except (SystemExit, ValueError) as exc:
        raise AssertionError(f"letsfrag does not accept {args}") from exc
    return parsed


def test_every_manifest_parses_and_is_labelled() -> None:
    kinds = sorted(doc["kind"] for _, doc in _documents())
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "PodDisruptionBudget", "Secret", "Service",
                     "StatefulSet"]
    for name, doc in _documents():
        assert doc["metadata"]["name"].startswith("letsfrag"), name


def test_containers_run_real_commands_with_real_configs(tmp_path: Path) -> None:
    configs = _configmap()
    seen = set()
    for name, doc, container in _containers():
        args = _parse_cli(container["args"])
        seen.add(args.command)
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounted.get("/etc/letsfrag") == "config", name
        config_path = Path(args.config)
        assert config_path.parent == Path("/etc/letsfrag") and config_path.name in configs, args.config
        kind = "broker" if args.command == "broker" else "host"
        config = _load(kind, configs[config_path.name], tmp_path)
        # the metrics port, the named container port and the probes agree
        assert config.metrics.listen is not None, f"{name}: probes need metrics.listen"
        _, port = parse_listen(config.metrics.listen)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        env_names = {e["name"] for e in container.get("env", [])}
        assert "POD_NAME" in env_names
        assert container["envFrom"] == [{"secretRef": {"name": "letsfrag"}}]
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        if kind == "host":
            assert config.host.id == ENV["POD_NAME"], "host.id comes from the pod name"
            assert doc["kind"] == "StatefulSet"
            assert pod["terminationGracePeriodSeconds"] >= (config.limits.leave_timeout + 2 * config.limits.stop_timeout
                                                            + 10), "the SIGTERM hand-off and the stop fit"
        else:
            assert doc["kind"] == "Deployment" and doc["spec"]["replicas"] == 2, "leader + standby"
    assert seen == {"broker", "supervise"}


def test_secret_example_holds_every_variable_the_configs_use() -> None:
    secret = next(doc for _, doc in _documents() if doc["kind"] == "Secret")
    used = set(re.findall(r"\$\{(\w+)\}", "".join(_configmap().values()))) - {"POD_NAME"}
    assert used == set(secret["stringData"])


def test_compose_services_run_real_commands(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "sim", "broker-1", "broker-2", "host-a", "host-b"} <= set(services)
    for name, service in services.items():
        if service.get("image", "").startswith("letsfrag"):
            args = _parse_cli(service["command"])
            if args.command in ("broker", "supervise"):
                local = ROOT / "deploy" / "compose" / Path(args.config).name
                env = dict(ENV, HOST_ID=service.get("environment", {}).get("HOST_ID", "x"))
                kind = "broker" if args.command == "broker" else "host"
                text = local.read_text().replace("cwd: /app", f"cwd: {ROOT}")
                text = text.replace("dir: /app/logs", f"dir: {tmp_path}/logs")
                path = tmp_path / f"{name}.yaml"
                path.write_text(text)
                config = (load_broker_config if kind == "broker" else load_host_config)(path, env=env)
                assert config.metrics.listen is not None


def test_dockerfile_runs_letsfrag_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M), "the image runs as a non-root user"
    assert 'ENTRYPOINT ["letsfrag", "--log-format", "json"]' in text
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", sorted(p.name for p in (ROOT / "deploy").glob("*.service")))
def test_systemd_units_are_hardened(unit: str) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(ROOT / "deploy" / unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout


def test_grafana_dashboard_queries_only_metrics_letsfrag_serves() -> None:
    import json

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    served = set()
    for module in ("letsfrag/metrics.py", "letsfrag/supervisor/supervisor_metrics.py",
                   "letsfrag/broker/broker_metrics.py"):
        served |= set(re.findall(r'"(letsfrag_[a-z_]+)"', (ROOT / module).read_text()))
    # counters and histograms are exposed with their suffixes
    exposed = served | {f"{n}_total" for n in served} | {f"{n}_{s}" for n in served for s in ("bucket", "sum", "count")}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"letsfrag_[a-z_]+", target["expr"])}
    assert used and used <= exposed, sorted(used - exposed)
