#!/usr/bin/env python3
"""What promtool does not check about the alert rules.

    python3 scripts/observability/check_rules.py [RULES.yml] [TESTS.yml] [RUNBOOK.md]

- every alert has labels.severity (critical or warning) and the annotations
  summary, description and runbook_url;
- every runbook_url points to docs/operations.md#<anchor> and the anchor is a
  heading there (GitHub's heading slugs);
- every alert has a unit test where it fires and one where it must not.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def main(argv: list[str]) -> int:
    rules_path = Path(argv[1]) if len(argv) > 1 else ROOT / "helm/chexvision/rules/chexvision-alerts.yml"
    tests_path = Path(argv[2]) if len(argv) > 2 else ROOT / "tests/observability/alerts.test.yml"
    runbook = Path(argv[3]) if len(argv) > 3 else ROOT / "docs/operations.md"
    problems: list[str] = []

    anchors = {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", runbook.read_text(encoding="utf-8"), re.M)}
    alerts = [r for g in yaml.safe_load(rules_path.read_text(encoding="utf-8"))["groups"]
              for r in g["rules"] if "alert" in r]
    names = [a["alert"] for a in alerts]
    for dup in {n for n in names if names.count(n) > 1}:
        problems.append(f"{dup}: defined more than once")
    for a in alerts:
        name = a["alert"]
        if a.get("labels", {}).get("severity") not in ("critical", "warning"):
            problems.append(f"{name}: labels.severity must be critical or warning")
        ann = a.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not str(ann.get(key, "")).strip():
                problems.append(f"{name}: no annotations.{key}")
        url = ann.get("runbook_url", "")
        m = re.fullmatch(r"docs/operations\.md#([\w-]+)", url)
        if not m:
            problems.append(f"{name}: runbook_url {url!r} is not docs/operations.md#<anchor>")
        elif m.group(1) not in anchors:
            problems.append(f"{name}: {runbook.name} has no heading for #{m.group(1)}")

    fires, quiet = set(), set()
    for test in yaml.safe_load(tests_path.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for name in names:
        if name not in fires:
            problems.append(f"{name}: no unit test where it fires")
        if name not in quiet:
            problems.append(f"{name}: no unit test where it must stay quiet")
    for name in (fires | quiet) - set(names):
        problems.append(f"tests name an alert that does not exist: {name}")

    if problems:
        print(f"{len(problems)} problem(s) with the alert rules:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{len(alerts)} alerts: severity, summary, description and runbook section each; "
          f"each tested firing and quiet", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
