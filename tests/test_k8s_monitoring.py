"""The monitoring manifests (k8s/components/monitoring): the Prometheus Operator's resources,
the alerts (promtool, and a section of docs/operations.md for each), and a Grafana dashboard
that uses only the metrics the app serves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_manifests import K8S, ROOT, find, need, run

pytestmark = pytest.mark.k8s

MONITORING = K8S / "components" / "monitoring"

# The metric names the app serves (a contract between the metrics code and k8s/): name -> type.
CONTRACT_METRICS = {
    "chat_ws_connections": "gauge",
    "chat_ws_connections_limit": "gauge",
    "chat_ws_frames_received_total": "counter",
    "chat_ws_frames_sent_total": "counter",
    "chat_messages_stored_total": "counter",
    "chat_fanout_latency_seconds": "histogram",
    "chat_catchups_total": "counter",
    "chat_resyncs_total": "counter",
    "chat_feed_reconnects_total": "counter",
    "chat_slow_consumers_total": "counter",
    "chat_rate_limited_total": "counter",
    "chat_http_request_duration_seconds": "histogram",
    "chat_db_queries_per_request": "histogram",
    "chat_celery_tasks_total": "counter",
    "chat_dependency_up": "gauge",
    "chat_draining": "gauge",
}


def test_custom_resources_have_the_operators_shape(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("prod", "staging"):
        objs = docs[overlay]
        service = find(objs, "Service", "chat-web")
        monitor = find(objs, "ServiceMonitor", "chat-web")
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        worker = find(objs, "Deployment", "chat-worker")["spec"]["template"]
        pods = find(objs, "PodMonitor", "chat-worker")
        assert (
            pods["spec"]["selector"]["matchLabels"].items() <= worker["metadata"]["labels"].items()
        )
        (endpoint,) = pods["spec"]["podMetricsEndpoints"]
        (container,) = worker["spec"]["containers"]
        assert endpoint["port"] in {p["name"] for p in container["ports"]}
        assert endpoint["path"] == "/metrics"
        rule = find(objs, "PrometheusRule", "chat")
        assert set(rule["spec"]) == {"groups"}
        for group in rule["spec"]["groups"]:
            assert set(group) <= {"name", "interval", "rules"}
            for r in group["rules"]:
                assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
                assert r["labels"]["severity"] in {"warning", "critical"}
                assert {"summary", "description", "runbook_url"} <= set(r["annotations"])


def alert_rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rule = find(objs, "PrometheusRule", "chat")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_alerts_pass_promtool_check_and_unit_tests(
    docs: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    promtool = need("promtool", "`make services` installs Debian's prometheus package")
    rule = find(docs["prod"], "PrometheusRule", "chat")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = run(promtool, "check", "rules", tmp_path / "rules.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copy(MONITORING / "alerts-test.yaml", tmp_path)
    test = run(promtool, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert test.returncode == 0, test.stdout + test.stderr


def test_alerts_are_the_documented_ones(docs: dict[str, list[dict[str, Any]]]) -> None:
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs/operations.md").read_text(), re.M)
    anchors = {slug(h) for h in headings}
    alerts = alert_rules(docs["prod"])
    assert {r["alert"] for r in alerts} == {
        "ChatFanoutLatencyHigh",
        "ChatDependencyDown",
        "ChatFeedReconnecting",
        "ChatHTTP5xx",
        "ChatSlowConsumers",
        "ChatConnectionsNearLimit",
    }
    for r in alerts:
        url = r["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("/docs/operations.md"), url
        assert anchor == slug(r["alert"]), url
        assert anchor in anchors, f"docs/operations.md has no section for #{anchor}"


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bchat_[a-z_]+", expr))


def check_contract(name: str) -> bool:
    if name in CONTRACT_METRICS:
        return True
    base, _, suffix = name.rpartition("_")
    return suffix in {"bucket", "sum", "count"} and CONTRACT_METRICS.get(base) == "histogram"


def test_dashboard_and_alerts_use_only_contract_metrics(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs = panels + [r["expr"] for r in alert_rules(docs["prod"])]
    hpa = find(docs["prod"], "HorizontalPodAutoscaler", "chat-web")
    exprs += [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load((MONITORING / "prometheus-adapter-rules.yaml").read_text())
    exprs += [r["seriesQuery"] for r in adapter["rules"]["custom"]]
    used = set().union(*map(metric_names, exprs))
    assert [name for name in sorted(used) if not check_contract(name)] == []
    # The dashboard shows every metric of the contract.
    shown = set().union(*map(metric_names, panels))
    assert [n for n in CONTRACT_METRICS if not any(s.startswith(n) for s in shown)] == []


def test_dashboard_ships_as_a_grafana_configmap(docs: dict[str, list[dict[str, Any]]]) -> None:
    config = find(docs["prod"], "ConfigMap", "chat-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["chat.json"])
    assert dashboard["uid"] == "chat-overview"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
