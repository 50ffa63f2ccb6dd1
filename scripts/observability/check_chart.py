#!/usr/bin/env python3
"""`helm lint` and `helm template` of helm/chexvision, with Helm's own engine.

    python3 scripts/observability/check_chart.py [CHART_DIR]

No `helm` binary comes from Debian, PyPI or npm; helm-python-sdk (PyPI,
tests/observability/requirements.txt) binds Helm's Go SDK (the library the
helm CLI is built on, v4) through a shared library in its wheel, so lint and
render here are Helm's. Checks:

- lint (strict) reports no error or warning;
- rendered with the defaults: one ConfigMap per dashboards/*.json, with the
  sidecar label and folder annotation, holding the file byte for byte; one
  PrometheusRule whose spec.groups equal rules/chexvision-alerts.yml;
- the switches work: both kinds off render no dashboard ConfigMap and no
  PrometheusRule (the services the chart also deploys are checked by
  scripts/deploy_check.sh); another sidecar label,
  extra labels, no folder; runbookBaseUrl makes every runbook_url absolute.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]


def render(chart_dir: Path, values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(chart_dir)) as chart:
        out = chart.render(values or {}, name="chexvision", namespace="monitoring")
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def observability(docs: list[dict]) -> list[dict]:
    """What this check is about: the dashboard ConfigMaps and the PrometheusRule
    (the chart also deploys the services: scripts/deploy_check.sh checks those)."""
    return [d for d in docs if d["kind"] == "PrometheusRule"
            or (d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"])]


@contextlib.contextmanager
def quiet_symlink_notes():
    """Helm's loader logs an INFO line on stderr (from Go, past sys.stderr)
    for the chart's configs/ link on every load; drop those, keep the rest."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if "found symbolic link in path" not in line:
                    print(line, file=sys.stderr)


def main(argv: list[str]) -> int:
    chart_dir = Path(argv[1]) if len(argv) > 1 else ROOT / "helm" / "chexvision"
    try:
        with quiet_symlink_notes():
            problems = check(chart_dir)
    except (helm.HelmError, yaml.YAMLError, KeyError, TypeError) as e:
        problems = [f"{type(e).__name__}: {e}"]
    if problems:
        print(f"helm chart {chart_dir}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    return 0


def check(chart_dir: Path) -> list[str]:
    problems: list[str] = []

    lint = helm.lint(str(chart_dir), strict=True)
    for m in lint.get("messages", []):
        # Helm's severities: 1 info, 2 warning, 3 error.
        if m.get("severity", 0) >= 2:
            problems.append(f"helm lint: {m.get('path')}: {m.get('error')}")
    problems += [f"helm lint: {e}" for e in lint.get("errors", [])]

    dashboards = {p.name: p.read_text(encoding="utf-8") for p in sorted((chart_dir / "dashboards").glob("*.json"))}
    rules = yaml.safe_load((chart_dir / "rules" / "chexvision-alerts.yml").read_text(encoding="utf-8"))

    docs = observability(render(chart_dir))
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    got = {}
    for m in maps:
        meta = m["metadata"]
        if meta.get("labels", {}).get("grafana_dashboard") != "1":
            problems.append(f"{meta['name']}: no grafana_dashboard: \"1\" label")
        if meta.get("annotations", {}).get("grafana_folder") != "CheXVision":
            problems.append(f"{meta['name']}: no grafana_folder annotation")
        if meta.get("namespace") != "monitoring":
            problems.append(f"{meta['name']}: namespace {meta.get('namespace')!r}")
        got.update(m["data"])
    for name, text in dashboards.items():
        if name not in got:
            problems.append(f"no ConfigMap holds {name}")
        elif got[name] != text.rstrip("\n"):
            problems.append(f"the ConfigMap's {name} differs from the file")
        else:
            json.loads(got[name])
    if len(maps) != len(dashboards):
        problems.append(f"{len(maps)} ConfigMaps for {len(dashboards)} dashboards")

    pr = [d for d in docs if d["kind"] == "PrometheusRule"]
    if len(pr) != 1:
        problems.append(f"{len(pr)} PrometheusRules rendered, want 1")
    else:
        if pr[0]["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"PrometheusRule apiVersion {pr[0]['apiVersion']}")
        if pr[0]["spec"]["groups"] != rules["groups"]:
            problems.append("PrometheusRule spec.groups differ from rules/chexvision-alerts.yml")
        if pr[0]["metadata"].get("labels", {}).get("release") != "kube-prometheus-stack":
            problems.append("PrometheusRule lacks the default release label")

    if observability(render(chart_dir, {"grafana": {"dashboards": {"enabled": False}},
                                        "prometheusRule": {"enabled": False}})):
        problems.append("with both switches off the chart still renders dashboards or rules")

    custom = observability(render(chart_dir, {
        "grafana": {"dashboards": {"label": "my_dashboards", "labelValue": "yes", "folder": "",
                                   "extraLabels": {"team": "radiology"}}},
        "prometheusRule": {"extraLabels": {"prometheus": "main"},
                           "runbookBaseUrl": "https://git.example.org/chexvision/-/blob/main/"},
    }))
    for d in custom:
        labels = d["metadata"].get("labels", {})
        if d["kind"] == "ConfigMap":
            if labels.get("my_dashboards") != "yes" or labels.get("team") != "radiology" \
                    or "grafana_dashboard" in labels or "annotations" in d["metadata"]:
                problems.append(f"custom values not applied to {d['metadata']['name']}")
        if d["kind"] == "PrometheusRule":
            if labels.get("prometheus") != "main":
                problems.append("prometheusRule.extraLabels not applied")
            urls = [r["annotations"]["runbook_url"] for g in d["spec"]["groups"] for r in g["rules"]]
            bad = [u for u in urls if not u.startswith("https://git.example.org/chexvision/-/blob/main/docs/operations.md#")]
            if bad:
                problems.append(f"runbookBaseUrl not applied: {bad}")

    if not problems:
        print(f"helm chart {chart_dir}: lint clean, renders {len(maps)} dashboard ConfigMaps and "
          f"a PrometheusRule of {sum(len(g['rules']) for g in rules['groups'])} alerts "
          f"(Helm SDK {helm.helm_sdk_version()})", file=sys.stderr)
    return problems


if __name__ == "__main__":
    sys.exit(main(sys.argv))
