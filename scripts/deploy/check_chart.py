#!/usr/bin/env python3
"""The Helm chart, linted and rendered with Helm's own engine, and what it renders.

    python3 scripts/deploy/check_chart.py [OUT_DIR]

helm-python-sdk (PyPI) is Helm's Go SDK v4 in a shared library, so lint,
schema validation and rendering here are Helm's. Checks:

- `helm lint --strict` with the defaults and each values file, for
  Kubernetes 1.30 and 1.32: no error, no warning;
- each values file (local, cpu, gpu), the defaults and three more cases
  (Kafka SASL with a private CA, Strimzi KafkaTopics, cloud identity
  annotations) render, and the objects pass scripts/deploy/objects.py;
- values.schema.json rejects a wrong type, an unknown key (top level and in
  a service), a secret in kafka.properties, two trainers, a bad store URI,
  and accepts every values file;
- the object checks catch faults planted in a good render (FAULTS);
- NOTES.txt renders and names what a person needs next;
- every value of values.yaml is documented in helm/README.md;
- the Prometheus adapter rule (helm/prometheus-adapter-values.yaml) serves
  the metric the HPA asks for.

With OUT_DIR, each render is written there as <case>.yaml for
scripts/deploy/validate.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

import objects
from common import (CHART, ROOT, SERVICES, VALUES_FILES, deep_merge, dump_all, effective_values, helm,
                    load_values, notes, quiet_helm, render)

KUBE_VERSIONS = ("v1.30.0", "v1.32.0")

# More than the values files show: the secret paths, Strimzi, cloud identity.
EXTRA_CASES = {
    "sasl-tls": deep_merge(load_values("cpu"), {
        "kafka": {"bootstrapServers": "chexvision-kafka-bootstrap.kafka:9093",
                  "properties": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"},
                  "sasl": {"existingSecret": "chexvision-kafka-user", "username": "chexvision",
                           "passwordKey": "password"},
                  "tls": {"existingSecret": "chexvision-cluster-ca-cert", "caKey": "ca.crt"}},
        "networkPolicy": {"kafka": {"ports": [9093]}},
        "image": {"pullSecrets": ["registry-credentials"]},
    }),
    "strimzi": deep_merge(load_values("gpu"), {
        "topics": {"job": {"enabled": False}, "strimzi": {"enabled": True, "namespace": "kafka"}},
        "config": {"topics": {"dead_letter": "hospital-a.chexvision.dlq"}},
    }),
    "identity": deep_merge(load_values("gpu"), {
        "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": "chexvision@p.iam.gserviceaccount.com"}},
        "trainer": {"serviceAccount": {"annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/chexvision-trainer"}}},
        "inference": {"autoscaling": {"queueDepth": {"enabled": False}}, "api": {"keys": {"existingSecret": ""}}},
        "config": {"log": {"level": "debug"}},
        "ingest": {"config": {"service": {"fetch_concurrency": 8}}},
    }),
}

# Each must fail at render time, with the schema naming the key.
BAD_VALUES = {
    "a wrong type (kafka.partitions: \"four\")": ({"kafka": {"partitions": "four"}}, "/kafka/partitions"),
    "an unknown top-level key (replicaCount)": ({"replicaCount": 3}, "replicaCount"),
    "an unknown service key (inference.replica)": ({"inference": {"replica": 2}}, "replica"),
    "a wrong nested type (trainer.gpu.enabled: \"yes\")": ({"trainer": {"gpu": {"enabled": "yes"}}},
                                                             "/trainer/gpu/enabled"),
    "a secret in kafka.properties": ({"kafka": {"properties": {"sasl.password": "hunter2"}}}, "sasl.password"),
    "a number in kafka.properties": ({"kafka": {"properties": {"linger.ms": 5}}}, "/kafka/properties/linger.ms"),
    "two trainers": ({"trainer": {"replicas": 2}}, "/trainer/replicas"),
    "a store that is not s3:// or file://": ({"store": {"uri": "gs://bucket"}}, "/store/uri"),
    "root (runAsUser: 0)": ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
    "an unknown shared config key": ({"config": {"servce": {}}}, "servce"),
}


def lint_problems(values: dict | None, label: str) -> list[str]:
    problems = []
    h = helm()
    for kube in KUBE_VERSIONS:
        with quiet_helm():
            report = h.lint(str(CHART), values or {}, strict=True, kube_version=kube)
        for m in report.get("messages", []):
            if m.get("severity", 0) >= 2:  # 1 info, 2 warning, 3 error
                problems.append(f"helm lint {label} ({kube}): {m.get('path')}: {m.get('error')}")
        problems += [f"helm lint {label} ({kube}): {e}" for e in report.get("errors", [])]
    return problems


def leaf_paths(values, prefix="") -> list[str]:
    """Every documented value: leaves, and maps or lists given as a whole."""
    if isinstance(values, dict) and values:
        out = []
        for k, v in values.items():
            out += leaf_paths(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def readme_problems() -> list[str]:
    text = (ROOT / "helm" / "README.md").read_text(encoding="utf-8")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    missing = []
    for path in leaf_paths(defaults):
        parts = path.split(".")
        generic = ".".join(["<service>"] + parts[1:]) if parts[0] in SERVICES else None
        # Free-form maps below a documented key (annotations, resources) count as documented.
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        gprefixes = [".".join(["<service>"] + parts[1:i]) for i in range(len(parts), 1, -1)] if generic else []
        if not any(f"`{p}`" in text for p in prefixes + gprefixes):
            missing.append(path)
    return [f"helm/README.md does not document {p}" for p in missing]


def adapter_problems() -> list[str]:
    """The adapter rule must serve the HPA's metric under its name."""
    path = ROOT / "helm" / "prometheus-adapter-values.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    metric = effective_values({})["inference"]["autoscaling"]["queueDepth"]["metricName"]
    rules = cfg["rules"]["custom"]
    served = [r for r in rules if (r.get("name") or {}).get("as") == metric]
    if len(served) != 1:
        return [f"{path.name}: {len(served)} rules serve {metric}, want 1"]
    rule = served[0]
    problems = []
    if metric not in rule["seriesQuery"]:
        problems.append(f"{path.name}: the rule's seriesQuery does not read {metric}")
    if set(rule["resources"]["overrides"]) != {"namespace", "pod"}:
        problems.append(f"{path.name}: the rule must map the namespace and pod labels (a Pods metric)")
    source = ROOT / "services" / "inference" / "src" / "metrics.rs"
    if f'"{metric}"' not in source.read_text(encoding="utf-8"):
        problems.append(f"{metric} is not registered in {source.relative_to(ROOT)}")
    return problems


def _container(docs: list[dict], component: str) -> dict:
    w = next(d for d in docs if d["kind"] == "Deployment"
             and d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    return w["spec"]["template"]["spec"]["containers"][0]


def _policy(docs: list[dict], component: str) -> dict:
    return next(d for d in docs if d["kind"] == "NetworkPolicy"
                and d["metadata"]["labels"]["app.kubernetes.io/component"] == component)


def _trainer_pod(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment"
                and d["metadata"]["name"].endswith("-trainer"))["spec"]["template"]["spec"]


# Faults the object checks must catch: (what, change to a gpu render, a word of the problem).
FAULTS = [
    ("the GPU toleration gone", lambda d: _trainer_pod(d).pop("tolerations"), "taint"),
    ("no GPU limit", lambda d: _container(d, "trainer")["resources"]["limits"].pop("nvidia.com/gpu"), "requests no"),
    ("liveness on /readyz", lambda d: _container(d, "ingest")["livenessProbe"]["httpGet"].update(path="/readyz"),
     "livenessProbe"),
    ("inference probed on the operations port",
     lambda d: _container(d, "inference")["readinessProbe"]["httpGet"].update(port="metrics"), "readinessProbe"),
    ("a writable root", lambda d: _container(d, "evaluator")["securityContext"].update(readOnlyRootFilesystem=False),
     "read-only"),
    ("a capability added", lambda d: _container(d, "preprocess")["securityContext"]["capabilities"].update(
        add=["NET_ADMIN"]), "capabilities"),
    ("a Secret rendered", lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "chexvision-s3", "labels": {"app.kubernetes.io/part-of": "chexvision"}}, "data": {"k": "dg=="}}),
     "renders Secrets"),
    ("a key as a literal", lambda d: _container(d, "ingest")["env"].append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}), "literal"),
    ("an egress flow nobody documented", lambda d: _policy(d, "trainer")["spec"]["egress"][2]["ports"].append(
        {"protocol": "TCP", "port": 5432}), "beyond the documented"),
    ("ingress to the API from anywhere", lambda d: _policy(d, "inference")["spec"]["ingress"][1].update(
        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}), "beyond the documented"),
    ("a peer no value names", lambda d: _policy(d, "ingest")["spec"]["egress"][1].update(
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}), "no configured peers"),
    ("two trainers", lambda d: next(x for x in d if x["kind"] == "Deployment"
                                     and x["metadata"]["name"].endswith("-trainer"))["spec"].update(replicas=2),
     "more than one"),
    ("a variable naming no config key", lambda d: _container(d, "inference")["env"].append(
        {"name": "CHEXVISION_SERVCE__API__BIND", "value": "x"}), "names no config key"),
]


def fault_problems() -> list[str]:
    import copy
    values = load_values("gpu")
    clean = render(values)
    effective = effective_values(values)
    problems = []
    for what, change, word in FAULTS:
        docs = copy.deepcopy(clean)
        change(docs)
        found = objects.check(docs, effective, "fault")
        if not any(word in p for p in found):
            problems.append(f"the object checks miss {what} (found: {found or 'nothing'})")
    return problems


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else None
    started = time.monotonic()
    problems: list[str] = []
    h = helm()

    cases = {"defaults": {}}
    cases.update({name: load_values(name) for name in VALUES_FILES})
    cases.update(EXTRA_CASES)

    for label in ["defaults", *VALUES_FILES]:
        problems += lint_problems(cases[label], label)

    counts = {}
    for label, values in cases.items():
        try:
            docs = render(values)
        except h.HelmError as e:
            problems.append(f"{label}: render failed: {e}")
            continue
        counts[label] = len(docs)
        effective = effective_values(values)
        problems += objects.check(docs, effective, label)
        if effective["topics"]["strimzi"]["enabled"]:
            problems += objects.check_kafka_topics(docs, effective, label)
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"chart-{label}.yaml").write_text(dump_all(docs), encoding="utf-8")

    # The identity case: annotations merged per account, the config values in the files.
    if "identity" in counts:
        docs = render(cases["identity"])
        accounts = {d["metadata"]["name"]: d["metadata"].get("annotations", {}) for d in docs
                    if d["kind"] == "ServiceAccount"}
        if "eks.amazonaws.com/role-arn" not in accounts.get("chexvision-trainer", {}) or \
                any("eks.amazonaws.com/role-arn" in a for n, a in accounts.items() if n != "chexvision-trainer") or \
                not all("iam.gke.io/gcp-service-account" in a for a in accounts.values()):
            problems.append("identity: ServiceAccount annotations not merged as documented")
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chexvision-config")
        ingest = yaml.safe_load(cm["data"]["release-ingest.yaml"])
        if ingest != {"inherits": "ingest.yaml", "log": {"level": "debug"},
                      "service": {"fetch_concurrency": 8}}:
            problems.append(f"identity: release-ingest.yaml is {ingest}")
        for name in ("platform.yaml", "trainer.yaml", "tiny.yaml"):
            if cm["data"].get(name) != (ROOT / "configs" / name).read_text(encoding="utf-8").rstrip("\n"):
                problems.append(f"the ConfigMap's {name} differs from configs/{name}")

    rejected = 0
    with quiet_helm():
        chart = h.Chart.load(str(CHART))
    try:
        for label in VALUES_FILES:
            try:
                chart.validate_schema(load_values(label))
            except h.HelmError as e:
                problems.append(f"values.schema.json rejects values-{label}.yaml: {e}")
        for what, (bad, needle) in BAD_VALUES.items():
            try:
                chart.render(bad, name="chexvision", namespace="chexvision")
                problems.append(f"values.schema.json accepts {what}")
            except h.HelmValuesError as e:
                if needle not in str(e):
                    problems.append(f"{what}: rejected without naming {needle}: {e}")
                else:
                    rejected += 1
            except h.HelmError as e:
                problems.append(f"{what}: failed, but not on the schema: {e}")
    finally:
        chart.close()

    for label in ("defaults", "local"):
        text = notes(cases[label])
        for needle in ("chexvision-inference", "docs/deployment.md", "/healthz"):
            if needle not in text:
                problems.append(f"NOTES.txt ({label}) does not mention {needle}")
    if "port-forward" not in notes(cases["local"]):
        problems.append("NOTES.txt (local) does not say how to reach the API")

    problems += fault_problems()
    problems += readme_problems()
    problems += adapter_problems()

    if problems:
        print(f"helm chart: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"helm chart: lint --strict clean for {len(VALUES_FILES) + 1} values sets x {len(KUBE_VERSIONS)} "
          f"Kubernetes versions; {len(counts)} renders ({', '.join(f'{k} {v}' for k, v in counts.items())} objects) "
          f"pass the object checks, which catch all {len(FAULTS)} planted faults; the schema rejects all {rejected} bad values; NOTES, README and the "
          f"adapter rule agree (Helm SDK {h.helm_sdk_version()}, {time.monotonic() - started:.1f} s)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
