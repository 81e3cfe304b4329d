"""Prometheus metrics and probes of a real deployment, scraped by a real Prometheus server.

A rehearsal (redis-server, simulator, broker, two supervisors with discord.py clusters) runs with
``metrics.listen`` on the broker and on each host. The test reads ``/metrics``, ``/healthz`` and ``/readyz``
over HTTP, then starts Debian's ``prometheus`` (skipped where it is not installed; ``.ci/run`` installs it) with
a 1 s scrape interval and asks its HTTP API for a shard's READY and the identify counter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.waiting import scaled, wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.redis_server import free_port

pytestmark = pytest.mark.integration


@dataclass
class MeteredRehearsal(Rehearsal):
    """A rehearsal whose broker and hosts each serve metrics on their own free port."""

    ports: dict[str, int] = field(default_factory=dict)

    def _listen(self, name: str) -> str:
        self.ports.setdefault(name, free_port())
        return f"metrics:\n  listen: 127.0.0.1:{self.ports[name]}\n"

    def broker_yaml(self) -> str:
        return super().broker_yaml() + self._listen("broker")

    def host_yaml(self, host_id: str, capacity: int | None = None) -> str:
        return super().host_yaml(host_id, capacity) + self._listen(host_id)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text (labels must match exactly the given ones, in any order)."""
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return None


@pytest.fixture
def deployment(tmp_path: Path) -> Any:
    made = MeteredRehearsal(RehearsalSettings(hosts=2, shards=8, shards_per_cluster=2), tmp_path / "d")
    try:
        yield made.start()
    finally:
        assert made.close() == []


def test_metrics_and_probes_of_a_running_deployment(deployment: MeteredRehearsal, tmp_path: Path) -> None:
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    h0, broker = deployment.ports["h0"], deployment.ports["broker"]

    def host_ready() -> bool:
        return all(_get(deployment.ports[h], "/readyz")[0] == 200 for h in ("h0", "h1"))

    wait_until_sync(host_ready, timeout=30, message="/readyz 200 on both hosts")
    status, body = _get(h0, "/healthz")
    assert status == 200 and "redis answers" in body
    status, body = _get(broker, "/readyz")
    assert status == 200 and body.strip() == "leader", body
    status, body = _get(broker, "/healthz")
    assert status == 200, body

    def host_text() -> str | None:
        text = _get(h0, "/metrics")[1]
        ready = [line for line in text.splitlines() if line.startswith("letsfrag_shard_ready{")]
        return text if ready and all(line.endswith(" 1.0") for line in ready) else None

    # the shard hashes follow the cluster's heartbeat, so they may lag the supervisor's READY by one beat
    text = wait_until_sync(host_text, timeout=20, message="every shard of h0 READY on its /metrics")
    assert "letsfrag_gateway_latency_seconds_bucket" in text
    assert (_sample(text, "letsfrag_host_lease_remaining_seconds", host="h0") or 0) > 0
    btext = _get(broker, "/metrics")[1]
    assert _sample(btext, "letsfrag_broker_leader", broker="b0") == 1.0
    assert (_sample(btext, "letsfrag_identify_granted_total") or 0) >= 8, btext
    assert _sample(btext, "letsfrag_clusters", placement="unassigned") == 0.0
    for secret in (deployment.secret, "BOT_TOKEN"):
        assert secret not in text + btext

    prometheus = shutil.which("prometheus")
    if prometheus is None and os.environ.get("CI"):
        pytest.fail("CI must run the scrape: .ci/run installs Debian's `prometheus`")
    if prometheus is None:
        pytest.skip("no prometheus binary (Debian package `prometheus`; .ci/run installs it)")
    config = tmp_path / "prometheus.yml"
    targets = [f"127.0.0.1:{port}" for port in deployment.ports.values()]
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "letsfrag", "static_configs": [{"targets": targets}]}],
    }))
    web = free_port()
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),
    )
    try:
        def query(expr: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    data = json.load(response)
            except OSError:
                return []
            return list(data.get("data", {}).get("result", []))

        shard0 = wait_until_sync(lambda: query('letsfrag_shard_ready{shard="0"}'), timeout=60,
                                 message="Prometheus has scraped shard 0's READY")
        assert shard0[0]["value"][1] == "1", shard0
        granted = wait_until_sync(lambda: query("letsfrag_identify_granted_total"), timeout=30,
                                  message="Prometheus has the identify counter")
        assert float(granted[0]["value"][1]) >= 8, granted
        up = wait_until_sync(lambda: len(r := query("up == 1")) == len(targets) and r, timeout=30,
                             message="every target up")
        assert {r["metric"]["instance"] for r in up} == set(targets)
        # every query of the Grafana dashboard in deploy/ is valid PromQL with data behind it
        dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        def status(expr: str) -> str:
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(json.load(response).get("status"))
            except urllib.error.HTTPError as exc:
                return f"{exc.code}: {exc.read().decode()[:200]}"

        assert {e: status(e) for e in exprs} == dict.fromkeys(exprs, "success")
        # the instant ones (no rate or increase over a window, no budget: this broker has no token) have data
        instant = [e for e in exprs if "rate(" not in e and "increase(" not in e and "budget" not in e]
        empty = [e for e in instant if not query(e)]
        assert not empty, f"dashboard queries without data: {empty}"
    finally:
        server.terminate()
        server.wait(scaled(10))


def test_readyz_turns_503_while_a_cluster_restarts(deployment: MeteredRehearsal) -> None:
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    h0 = deployment.ports["h0"]
    wait_until_sync(lambda: _get(h0, "/readyz")[0] == 200, timeout=30, message="h0 ready")
    victim = psutil.Process(deployment.cluster_pids("h0")[0])
    victim.kill()
    _, body = wait_until_sync(lambda: (r := _get(h0, "/readyz"))[0] == 503 and r, timeout=10, interval=0.02,
                                   message="h0 /readyz 503 after a cluster died")
    assert "not READY" in body
    assert _get(h0, "/healthz")[0] == 200, "the supervisor itself stays healthy"
    wait_until_sync(lambda: _get(h0, "/readyz")[0] == 200, timeout=40, message="h0 ready again after the restart")
