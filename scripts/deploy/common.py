"""What the deployment checks share: the chart, its values files, rendering
with Helm's own engine (helm-python-sdk: Helm's Go SDK in a shared library),
and the kustomize overlays that must hold the same objects."""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "chexvision"
K8S = ROOT / "k8s"
RELEASE = "chexvision"
NAMESPACE = "chexvision"
SERVICES = ("ingest", "preprocess", "trainer", "evaluator", "inference")

# Each values file and the kustomize overlay that is the same release.
VALUES_FILES = {
    "local": CHART / "values-local.yaml",
    "cpu": CHART / "values-cpu.yaml",
    "gpu": CHART / "values-gpu.yaml",
}
OVERLAYS = {"local": K8S / "overlays" / "dev", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}

# Custom resources: no Kubernetes schema covers them (kubernetes-validate skips
# them); their content is checked by promtool and by the object checks.
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kafka.strimzi.io/")

# Labels and annotations only Helm puts on objects.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
HELM_ANNOTATIONS = ("helm.sh/hook", "helm.sh/hook-weight", "helm.sh/hook-delete-policy")


@contextlib.contextmanager
def quiet_helm():
    """Helm's chart loader logs an INFO line on stderr for the configs/
    symlink on every load (from Go, past Python's sys.stderr): keep it off
    the output, pass anything else through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if "found symbolic link in path" not in line:
                    print(line, file=sys.stderr)


def helm():
    import helm_python

    return helm_python


def load_values(name_or_path: str | Path) -> dict:
    path = VALUES_FILES.get(str(name_or_path), Path(name_or_path))
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def effective_values(values: dict | None) -> dict:
    """The chart's defaults with `values` on top, as Helm merges them."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return deep_merge(defaults, values or {})


def render_raw(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included. Raises HelmError."""
    h = helm()
    with quiet_helm():
        with h.Chart.load(str(CHART)) as chart:
            return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def parse(texts) -> list[dict]:
    docs: list[dict] = []
    for text in texts:
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def render(values: dict | None = None) -> list[dict]:
    out = render_raw(values)
    return parse(text for path, text in sorted(out.items()) if not path.endswith("NOTES.txt"))


def notes(values: dict | None = None) -> str:
    out = render_raw(values)
    return next((t for p, t in out.items() if p.endswith("NOTES.txt")), "")


def kustomize(overlay: Path) -> list[dict]:
    """`kubectl kustomize` of an overlay (kubectl's built-in kustomize)."""
    kubectl = os.environ.get("KUBECTL", "kubectl")
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay.relative_to(ROOT)}: {out.stderr.strip()}")
    return parse([out.stdout])


def key(doc: dict) -> tuple[str, str]:
    return (doc["kind"], doc["metadata"]["name"])


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (config files, dashboards) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str):
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump_all(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def strip_helm(doc: dict) -> dict:
    """A rendered object as a plain manifest: without Helm's own labels and
    hook annotations (the topic Job is an ordinary Job under kustomize)."""
    doc = copy.deepcopy(doc)

    def clean(meta: dict) -> None:
        labels = meta.get("labels") or {}
        for k in HELM_LABELS:
            labels.pop(k, None)
        annotations = meta.get("annotations") or {}
        for k in HELM_ANNOTATIONS:
            annotations.pop(k, None)
        if "annotations" in meta and not annotations:
            del meta["annotations"]

    clean(doc["metadata"])
    template = (doc.get("spec") or {}).get("template")
    if isinstance(template, dict) and "metadata" in template:
        clean(template["metadata"])
    return doc
