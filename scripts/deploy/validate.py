#!/usr/bin/env python3
"""Every rendered manifest against the Kubernetes API schemas.

    python3 scripts/deploy/validate.py DIR

Each object of each DIR/*.yaml (the chart's renders and the kustomize
overlays' output, written by check_chart.py and check_kustomize.py) is
validated with kubernetes-validate (PyPI; the OpenAPI schemas of each
Kubernetes release, strict: unknown fields are errors) against Kubernetes
1.30 and 1.32. Its command line turns a missing schema into a warning, so a
mistyped apiVersion would pass; here only the custom resources
(monitoring.coreos.com, kafka.strimzi.io) may lack one. Their content is
checked elsewhere: the PrometheusRules' groups are written out as a rules
file and go through `promtool check rules`; ServiceMonitors and KafkaTopics
through the object checks.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

from common import CUSTOM_GROUPS

VERSIONS = ("1.30.0", "1.32.0")

# kubernetes-validate reads and parses the same schema files for every object;
# remember them (read-only use) to keep the run near a second.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)


def self_test() -> list[str]:
    """The validator must refuse what the API server would: an unknown field,
    a wrong type, an apiVersion no release has."""
    base = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}
    bad = {
        "an unknown field": lambda d: d["spec"]["template"]["spec"].update(automountToken=False),
        "a wrong type": lambda d: d["spec"].update(replicas="two"),
        "an apiVersion no release has": lambda d: d.update(apiVersion="apps/v2"),
    }
    problems = []
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(base, version, strict=True)
        except Exception as e:  # noqa: BLE001
            problems.append(f"self-test: a valid Deployment fails on {version}: {e}")
        for what, change in bad.items():
            doc = json.loads(json.dumps(base))
            change(doc)
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                problems.append(f"self-test: kubernetes-validate accepts {what} ({version})")
            except (kv_utils.ValidationError, kv_utils.SchemaNotFoundError):
                pass
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    started = time.monotonic()
    files = sorted(Path(argv[1]).glob("*.yaml"))
    if not files:
        print(f"validate: no manifests in {argv[1]}", file=sys.stderr)
        return 1
    problems: list[str] = []
    validated = skipped = 0
    rule_specs: dict[str, tuple[str, dict]] = {}
    for f in files:
        for doc in (d for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d):
            what = f"{f.name}: {doc['kind']} {doc['metadata']['name']}"
            if doc["apiVersion"].startswith(CUSTOM_GROUPS):
                skipped += 1
                if doc["kind"] == "PrometheusRule":
                    text = json.dumps(doc["spec"], sort_keys=True)
                    rule_specs.setdefault(text, (what, doc["spec"]))
                continue
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    validated += 1
                except kv_utils.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    problems.append(f"{what}: Kubernetes {version}: {path}: {e.message}")
                except kv_utils.SchemaNotFoundError as e:
                    problems.append(f"{what}: {e.message}")

    problems += self_test()

    promtool = os.environ.get("PROMTOOL", "promtool")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, spec) in enumerate(rule_specs.values()):
            path = Path(tmp) / f"rules-{i}.yml"
            path.write_text(yaml.safe_dump(spec), encoding="utf-8")
            out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
            if out.returncode != 0:
                problems.append(f"{what}: promtool check rules: {(out.stdout + out.stderr).strip()}")

    if problems:
        print(f"validate: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"validate: {validated // len(VERSIONS)} objects from {len(files)} renders valid against "
          f"Kubernetes {' and '.join(VERSIONS)} (kubernetes-validate {kubernetes_validate.__version__}, strict); "
          f"{skipped} custom resources left to their own checks, {len(rule_specs)} distinct PrometheusRule "
          f"specs pass promtool check rules ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
