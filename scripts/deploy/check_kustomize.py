#!/usr/bin/env python3
"""k8s/ against the chart: no drift.

    python3 scripts/deploy/check_kustomize.py [OUT_DIR]

Builds every overlay with `kubectl kustomize` (kubectl's built-in
kustomize) and holds it to the chart rendered with the values file it
stands for (dev: values-local.yaml, cpu: values-cpu.yaml, gpu:
values-gpu.yaml):

- the same kinds and names, no more, no fewer;
- the same objects: every field equal once Helm's own labels and hook
  annotations are set aside (environment variables compared by name, since
  a kustomize patch appends the ones it adds);
- the object checks of scripts/deploy/objects.py pass on the overlay too.

The generated base and components are checked against the chart by
render_k8s.py --check. With OUT_DIR, each overlay's output is written there
as kustomize-<overlay>.yaml for scripts/deploy/validate.py.
"""

from __future__ import annotations

import copy
import difflib
import sys
import time
from pathlib import Path

import yaml

import objects
from common import OVERLAYS, ROOT, dump_all, effective_values, key, kustomize, load_values, render, strip_helm


def normalise(doc: dict) -> dict:
    doc = strip_helm(doc)
    pod = objects.pod_of(doc)
    if pod:
        for c in pod["spec"].get("containers", []):
            if "env" in c:
                c["env"] = sorted(c["env"], key=lambda e: e["name"])
    return doc


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else None
    started = time.monotonic()
    problems: list[str] = []
    summary = []
    for label, overlay in OVERLAYS.items():
        name = overlay.relative_to(ROOT)
        values = load_values(label)
        try:
            built = kustomize(overlay)
        except (RuntimeError, FileNotFoundError) as e:
            problems.append(str(e))
            continue
        chart = {key(d): normalise(d) for d in render(values)}
        ours = {key(d): normalise(d) for d in built}
        if set(chart) != set(ours):
            problems.append(f"{name}: kinds and names differ from the chart with values-{label}.yaml: "
                            f"only in the overlay {sorted(set(ours) - set(chart))}, "
                            f"only in the chart {sorted(set(chart) - set(ours))}")
        for k in sorted(set(chart) & set(ours)):
            if chart[k] != ours[k]:
                diff = "".join(list(difflib.unified_diff(
                    yaml.safe_dump(chart[k], sort_keys=True).splitlines(True),
                    yaml.safe_dump(ours[k], sort_keys=True).splitlines(True),
                    f"chart (values-{label}.yaml)", str(name), n=1))[:40])
                problems.append(f"{name}: {k[0]} {k[1]} differs from the chart's:\n{diff}")
        problems += objects.check(built, effective_values(values), str(name))
        summary.append(f"{overlay.name} {len(built)}")
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"kustomize-{overlay.name}.yaml").write_text(dump_all(copy.deepcopy(built)), encoding="utf-8")
    if problems:
        print(f"kustomize: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"kustomize: every overlay equals the chart's render with its values file "
          f"({', '.join(summary)} objects) and passes the object checks "
          f"({time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
