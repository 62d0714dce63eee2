"""Prometheus scraping every pod (file_sd), with the alert rules of the PrometheusRule in k8s/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cluster.procs import Proc, StartFailed, spawn, wait_http
from cluster.state import DRAINED, REPO, State

CONFIG = """\
# Written by `python -m cluster`; the pods are in targets.json, rewritten when pods change.
global:
  scrape_interval: 2s
  scrape_timeout: 1s
  evaluation_interval: 5s
rule_files: [rules.yml]
scrape_configs:
  - job_name: chat
    file_sd_configs:
      - files: [targets.json]
  - job_name: worker
    static_configs:
      - targets: ["127.0.0.1:{worker_metrics}"]
        labels: {{namespace: cluster}}
  - job_name: haproxy
    static_configs:
      - targets: ["127.0.0.1:{haproxy_stats}"]
"""


def root(state: State) -> Path:
    return state.root / "prometheus"


def write_targets(state: State) -> None:
    """Every pod not drained on purpose, labelled pod="podN"; Prometheus watches the file.

    The labels are the ones the alert rules group by in Kubernetes (namespace, pod).
    """
    targets = [
        {"targets": [f"127.0.0.1:{pod.port}"], "labels": {"namespace": "cluster", "pod": pod.name}}
        for pod in state.pods
        if pod.state != DRAINED
    ]
    path = root(state) / "targets.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    # Replaced in one step, so Prometheus never reads half a file.
    os.replace(tmp, path)


def find_rule_groups(repo: Path = REPO) -> tuple[list[Any], str]:
    """spec.groups of every PrometheusRule under k8s/, and where they came from."""
    groups: list[Any] = []
    sources = []
    for path in sorted((repo / "k8s").rglob("*.y*ml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue  # a kustomize patch or template that is not plain YAML: not a rule
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
                found = doc.get("spec", {}).get("groups", [])
                groups.extend(found)
                sources.append(f"{path.relative_to(repo)} ({len(found)} groups)")
    return groups, ", ".join(sources)


def write_rules(state: State) -> str:
    """rules.yml from the PrometheusRule, checked by promtool; an empty one if none or invalid."""
    path = root(state) / "rules.yml"
    groups, source = find_rule_groups()
    if not groups:
        path.write_text("groups: []\n")
        return "none: no PrometheusRule under k8s/ yet (an empty rules file is loaded)"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    promtool = shutil.which("promtool")
    if promtool is None:
        return f"{source}, not checked (no promtool)"
    check = subprocess.run(  # noqa: S603 -- our own command line
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        path.write_text("groups: []\n")
        return f"none: promtool rejected {source}:\n{check.stdout}{check.stderr}"
    rules = sum(len(group.get("rules", [])) for group in groups)
    return f"{rules} rules from {source}"


def start(state: State, env: dict[str, str]) -> Proc:
    home = root(state)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    config.write_text(
        CONFIG.format(
            haproxy_stats=state.ports["haproxy_stats"], worker_metrics=state.ports["worker_metrics"]
        )
    )
    write_targets(state)
    state.rules = write_rules(state)
    binary = shutil.which("prometheus")
    if binary is None:
        raise StartFailed("prometheus not found: `make services` installs it")
    log = state.root / "logs" / "prometheus.log"
    url = f"127.0.0.1:{state.ports['prometheus']}"
    proc = spawn(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={url}",
        ],
        log,
        env,
    )
    wait_http(f"http://{url}/-/ready", proc, log, timeout=30.0)
    return proc
