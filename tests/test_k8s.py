"""The Kubernetes manifests (k8s/): every overlay renders, passes strict schema validation
and checkov, and its workloads keep the shape docs/operations.md promises. The monitoring
manifests are tests/test_k8s_monitoring.py's."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.k8s_manifests import OVERLAYS, ROOT, find, run

pytestmark = pytest.mark.k8s

KUBERNETES_VERSION = "1.31.0"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
# Kinds from the Prometheus Operator's CRDs: kubernetes-validate has no schema for them, so
# test_custom_resources_have_the_operators_shape (tests/test_k8s_monitoring.py) checks them.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
CHAT_COMPONENTS = {"web", "worker", "beat", "migrate"}


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            yield obj, obj["spec"]["template"]["spec"]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def test_every_overlay_renders_the_workloads(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in docs.items():
        names = {(o["kind"], o["metadata"]["name"]) for o in objs}
        for kind, name in [
            ("Deployment", "chat-web"),
            ("Deployment", "chat-worker"),
            ("Deployment", "chat-beat"),
            ("Job", "chat-migrate"),
            ("NetworkPolicy", "default-deny"),
        ]:
            assert (kind, name) in names, f"{overlay} has no {kind} {name}"
        namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        (namespace,) = [o for o in objs if o["kind"] == "Namespace"]
        assert namespaces == {namespace["metadata"]["name"]}, overlay
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_manifests_pass_strict_schema_validation(docs: dict[str, list[dict[str, Any]]]) -> None:
    checked = 0
    for overlay, objs in docs.items():
        for obj in objs:
            if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{overlay} {obj['kind']}/{obj['metadata']['name']}: {error.message}")
            checked += 1
    assert checked > 50


def test_checkov_finds_no_failed_check(rendered: dict[str, Path]) -> None:
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: `make tools` creates .venv-tools with it")
    folder = next(iter(rendered.values())).parent
    result = run(
        CHECKOV, "--config-file", ROOT / ".checkov.yaml", "-d", folder, "-o", "json", timeout=120
    )
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 500
    scanned = {c["file_path"] for c in report["results"]["passed_checks"]}
    assert scanned == {f"/{overlay}.yaml" for overlay in OVERLAYS}
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_pod_is_restricted_sized_and_probed(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in docs.items():
        for obj, spec in pod_specs(objs):
            where = f"{overlay} {obj['kind']}/{obj['metadata']['name']}"
            assert spec.get("automountServiceAccountToken") is False, where
            pod = spec["securityContext"]
            assert pod.get("runAsNonRoot") is True, where
            assert pod.get("runAsUser") == 10001, where
            assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec.get("initContainers", []) + spec["containers"]:
                ctx = c["securityContext"]
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("capabilities") == {"drop": ["ALL"]}, where
                for kind in ("requests", "limits"):
                    assert set(c["resources"][kind]) == {"cpu", "memory"}, where
                assert ":" in c["image"], where
                assert not c["image"].endswith(":latest"), where
                assert "imagePullPolicy" in c, where
                if component(obj) in CHAT_COMPONENTS:
                    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                    assert "emptyDir" in volumes[mounts["/tmp"]], where  # noqa: S108 -- a path in the pod
                    assert volumes[mounts["/run/secrets/chat"]]["secret"]["secretName"].startswith(
                        "chat-secrets"
                    ), where
            if obj["kind"] != "Job":
                for c in spec["containers"]:
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        assert probe in c, f"{where} {c['name']} has no {probe}"


def test_web_pods_drain_before_they_are_killed(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, objs in docs.items():
        config = find(objs, "ConfigMap", "chat-config")["data"]
        web = find(objs, "Deployment", "chat-web")
        spec = web["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"] == ["web"]
        assert container["ports"] == [{"name": "http", "containerPort": 8000}]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
        assert config["DRAIN_SECONDS"] == "20"
        assert spec["terminationGracePeriodSeconds"] == 45 > 5 + int(config["DRAIN_SECONDS"])
        assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, overlay


def test_prometheus_and_the_kubelet_get_answers_not_redirects(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    """They reach a web pod over plain HTTP at its IP: a Host Django must allow, no 301."""
    for overlay, objs in docs.items():
        config = find(objs, "ConfigMap", "chat-config")["data"]
        assert config["SECURE"] == "0" or config["SECURE_SSL_REDIRECT"] == "0", overlay
        (web,) = find(objs, "Deployment", "chat-web")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in web["env"]}
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["ALLOWED_HOSTS"]["value"] == "$(ALLOWED_HOSTS),$(POD_IP)"
        assert [e["name"] for e in web["env"]].index("POD_IP") < list(env).index("ALLOWED_HOSTS")


def test_secrets_are_files_the_settings_read(
    docs: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Each *_FILE the ConfigMap names is a key of chat-secrets that project/settings.py reads."""
    config = find(docs["prod"], "ConfigMap", "chat-config")["data"]
    files = {k.removesuffix("_FILE"): v for k, v in config.items() if k.endswith("_FILE")}
    assert set(files) == {"DATABASE_URL", "REDIS_URL", "CACHE_URL", "SECRET_KEY"}
    assert all(v == f"/run/secrets/chat/{k}" for k, v in files.items())
    assert not [o for o in docs["prod"] if o["kind"] == "Secret"], "prod's Secret is made outside"
    values = {
        "DATABASE_URL": "postgres://chat:pw@db.example:5432/chat",
        "REDIS_URL": "redis://redis.example:6379/0",
        "CACHE_URL": "redis://cache.example:6379/0",
        "SECRET_KEY": "k" * 50,
    }
    env = {k: v for k, v in os.environ.items() if k not in values and not k.endswith("_FILE")}
    for name, value in values.items():
        (tmp_path / name).write_text(value + "\n")  # as a mounted file ends
        env[f"{name}_FILE"] = str(tmp_path / name)
    env.update(SECURE="1", ALLOWED_HOSTS="chat.example.com")
    env.update(DJANGO_SETTINGS_MODULE="project.settings")
    code = (
        "from django.conf import settings as s; import json; print(json.dumps("
        "[s.DATABASES['default']['ENGINE'], s.DATABASES['default']['HOST'], s.REDIS_URL,"
        " s.CELERY_BROKER_URL, s.CACHES['default']['LOCATION'], s.SECRET_KEY]))"
    )
    result = run(sys.executable, "-c", code, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "django.db.backends.postgresql",
        "db.example",
        values["REDIS_URL"],
        values["REDIS_URL"],
        values["CACHE_URL"],
        values["SECRET_KEY"],
    ]


def test_prod_scales_web_on_connections_and_cpu(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, least in (("prod", 3), ("staging", 2)):
        objs = docs[overlay]
        hpa = find(objs, "HorizontalPodAutoscaler", "chat-web")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == "chat-web"
        assert hpa["spec"]["minReplicas"] == least
        pods, cpu = hpa["spec"]["metrics"]
        assert pods["type"] == "Pods"
        assert pods["pods"]["metric"]["name"] == "chat_ws_connections"
        limit = int(find(objs, "ConfigMap", "chat-config")["data"]["MAX_CONNECTIONS_PER_PROCESS"])
        assert int(pods["pods"]["target"]["averageValue"]) < 0.8 * limit
        assert cpu["type"] == "Resource"
        assert cpu["resource"]["name"] == "cpu"
        # The HPA alone sets the web replica count.
        assert "replicas" not in find(objs, "Deployment", "chat-web")["spec"]
    dev_web = find(docs["dev"], "Deployment", "chat-web")
    assert dev_web["spec"]["replicas"] == 1
    assert not [o for o in docs["dev"] if o["kind"] == "HorizontalPodAutoscaler"]


def test_prod_runs_one_beat_and_spreads_web_pods(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("prod", "staging"):
        objs = docs[overlay]
        beat = find(objs, "Deployment", "chat-beat")
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        web = find(objs, "Deployment", "chat-web")["spec"]["template"]["spec"]
        keys = {c["topologyKey"] for c in web["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        pdb = find(objs, "PodDisruptionBudget", "chat-web")
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "web"
        (image,) = {c["image"] for _, s in pod_specs(objs) for c in s["containers"]}
        assert image.startswith("ghcr.io/OWNER/chat:")
        assert not image.endswith(":latest")
    dev_kinds = {(o["kind"], o["metadata"]["name"]) for o in docs["dev"]}
    assert {("StatefulSet", "chat-postgres"), ("StatefulSet", "chat-redis")} <= dev_kinds
    for name in ("chat-postgres", "chat-redis"):
        assert find(docs["dev"], "StatefulSet", name)["spec"]["volumeClaimTemplates"]


def routes(path: str, ingress: dict[str, Any]) -> bool:
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            if p["pathType"] == "Exact" and path == p["path"]:
                return True
            prefix = p["path"].rstrip("/")
            if p["pathType"] == "Prefix" and (path == prefix or path.startswith(prefix + "/")):
                return True
    return False


def test_ingress_keeps_websockets_open_and_metrics_inside(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    ingress = find(docs["prod"], "Ingress", "chat")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    for path in ("/", "/ws/", "/api/rooms", "/static/app.js", "/accounts/login/", "/admin/"):
        assert routes(path, ingress), path
    for path in ("/metrics", "/healthz", "/readyz"):
        assert not routes(path, ingress), f"the Ingress routes {path}"


def test_network_policies_allow_only_what_each_pod_needs(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    objs = docs["prod"]
    deny = find(objs, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress: dict[str, set[int]] = {}
    ingress: dict[str, set[int]] = {}
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        spec = policy["spec"]
        who = spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component", "*")
        for rule in spec.get("egress", []):
            egress.setdefault(who, set()).update(p["port"] for p in rule["ports"])
        for rule in spec.get("ingress", []):
            ingress.setdefault(who, set()).update(p["port"] for p in rule["ports"])
    assert egress == {
        "*": {53},
        "web": {5432, 6379},
        "worker": {5432, 6379, 25, 465, 587, 443, 80},
        "beat": {6379},
        "migrate": {5432},
    }
    assert ingress == {"web": {8000}, "worker": {9808}}
