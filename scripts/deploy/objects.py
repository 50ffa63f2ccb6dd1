"""Assertions on rendered objects, the chart's or a kustomize overlay's.

`check(docs, values, label)` returns the problems found in one render made
with `values` (the chart's defaults with a values file on top). What it
holds every render to:

- workloads: every pod and container non-root, no privilege escalation, all
  capabilities dropped, read-only root file system with an emptyDir at
  /tmp, RuntimeDefault seccomp, no API token; requests and limits for CPU
  and memory; a pinned image tag;
- every Deployment: liveness GET /healthz and readiness GET /readyz on the
  port the process binds (inference: service.api.bind, the others:
  http.bind, through the CHEXVISION_* variables the chart sets), --config
  naming a file of the mounted ConfigMap, and the variables naming real
  config keys;
- the trainer: one replica at most, Recreate; with trainer.gpu.enabled a
  GPU limit, a toleration for the GPU taint, the CUDA image and device, and
  an existing priority class; without, none of it;
- Secrets: none rendered; every Secret a pod references is one named by an
  existingSecret value and every such value is referenced; no secret-looking
  variable holds a literal;
- ServiceAccounts, Services, PodDisruptionBudgets, ServiceMonitors, the HPA
  and the Ingress each point at something that exists;
- NetworkPolicies: each workload selected by exactly one, whose flows are
  exactly those docs/deployment.md lists (FLOWS below).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from common import CHART, CUSTOM_GROUPS, ROOT, SERVICES

ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONFIG_KEYS = {"store", "bus", "s3", "kafka", "topics", "log", "http", "service"}
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|sasl\.password)", re.IGNORECASE)
GPU_TAINT = {"key": "nvidia.com/gpu", "effect": "NoSchedule"}

# The network flows of docs/deployment.md ("Network policies"): per workload,
# (direction, the networkPolicy value whose peers it names, port source).
FLOWS = {
    "service": {("ingress", "prometheus", "metrics"), ("egress", "dns", "dns"),
                ("egress", "kafka", "kafka"), ("egress", "s3", "s3")},
    "inference": {("ingress", "inferenceClients", "api")},
    "topics": {("egress", "dns", "dns"), ("egress", "kafka", "kafka")},
}


def expected_flows(component: str, values: dict) -> set[tuple]:
    """(direction, peers name, protocol, port) the policy of a component must allow."""
    np = values["networkPolicy"]
    ports = {
        "metrics": [("TCP", values["metricsPort"])],
        "api": [("TCP", values["inference"]["api"]["port"])],
        "dns": [(proto, p) for p in np["dns"]["ports"] for proto in ("UDP", "TCP")],
        "kafka": [("TCP", p) for p in np["kafka"]["ports"]],
        "s3": [("TCP", p) for p in np["s3"]["ports"]],
    }
    flows = FLOWS["topics"] if component == "topics" else FLOWS["service"] | (
        FLOWS["inference"] if component == "inference" else set())
    return {(d, peers, proto, port) for d, peers, src in flows for proto, port in ports[src]}


def matches(selector: dict, labels: dict) -> bool:
    sel = selector.get("matchLabels", {}) if "matchLabels" in selector or "matchExpressions" in selector \
        else selector
    if selector.get("matchExpressions"):
        return False  # the chart uses none; an expression would need its own check
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def pod_of(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]
    return None


def component_of(doc: dict) -> str:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def env_map(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def secret_refs(pod: dict) -> set[str]:
    spec = pod["spec"]
    names = set()
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
        for ef in c.get("envFrom", []):
            if "secretRef" in ef:
                names.add(ef["secretRef"]["name"])
    for v in spec.get("volumes", []):
        if "secret" in v:
            names.add(v["secret"]["secretName"])
        for src in (v.get("projected") or {}).get("sources", []):
            if "secret" in src:
                names.add(src["secret"]["name"])
    for s in spec.get("imagePullSecrets", []):
        names.add(s["name"])
    return names


def configured_secrets(values: dict) -> set[str]:
    names = {values["s3"]["existingSecret"], values["kafka"]["sasl"]["existingSecret"],
             values["kafka"]["tls"]["existingSecret"], values["inference"]["api"]["keys"]["existingSecret"]}
    names |= set(values["image"]["pullSecrets"])
    return {n for n in names if n}


def check(docs: list[dict], values: dict, label: str) -> list[str]:
    problems: list[str] = []

    def fail(msg: str) -> None:
        problems.append(f"{label}: {msg}")

    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        name = d["metadata"]["name"]
        if len(name) > 63 or not DNS_LABEL.match(name):
            fail(f"{d['kind']} {name}: not a DNS label of at most 63 characters")
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "chexvision":
            fail(f"{d['kind']} {name}: no app.kubernetes.io/part-of: chexvision label")
    names = lambda kind: {d["metadata"]["name"] for d in by_kind.get(kind, [])}  # noqa: E731

    # ---- Secrets --------------------------------------------------------------
    if "Secret" in by_kind:
        fail(f"renders Secrets {sorted(names('Secret'))}: secrets come only from existingSecret values")
    referenced: set[str] = set()
    workloads = [d for d in docs if pod_of(d)]
    for w in workloads:
        referenced |= secret_refs(pod_of(w))
        for c in pod_of(w)["spec"]["containers"]:
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]) and "value" in e:
                    fail(f"{w['metadata']['name']}: {e['name']} holds a literal value")
    configured = configured_secrets(values)
    if referenced - configured:
        fail(f"pods reference Secrets no value names: {sorted(referenced - configured)}")
    if configured - referenced:
        fail(f"existingSecret values no pod references: {sorted(configured - referenced)}")
    for ing in by_kind.get("Ingress", []):
        for t in ing["spec"].get("tls", []):
            if not t.get("secretName"):
                fail(f"Ingress {ing['metadata']['name']}: TLS without a secretName")

    # ---- the ConfigMap of configs/ ----------------------------------------------
    config_maps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}

    # ---- workloads --------------------------------------------------------------
    accounts = names("ServiceAccount")
    for w in workloads:
        wname, pod = w["metadata"]["name"], pod_of(w)
        spec = pod["spec"]
        comp = component_of(w)
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True or not psc.get("runAsUser"):
            fail(f"{wname}: pod securityContext must set runAsNonRoot and a non-zero runAsUser")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(f"{wname}: pod seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{wname}: mounts a service account token")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            fail(f"{wname}: shares a host namespace")
        sa = spec.get("serviceAccountName")
        if values["serviceAccount"]["create"] and sa not in accounts:
            fail(f"{wname}: ServiceAccount {sa} is not rendered")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            cname = f"{wname}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("runAsNonRoot") is not True:
                fail(f"{cname}: runAsNonRoot is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(f"{cname}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                fail(f"{cname}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{cname}: root file system is not read-only")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []) or caps.get("add"):
                fail(f"{cname}: capabilities must drop ALL and add none")
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            tmp = mounts.get("/tmp")
            if not tmp or "emptyDir" not in volumes.get(tmp["name"], {}):
                fail(f"{cname}: no emptyDir at /tmp (the only writable path)")
            for m in mounts.values():
                vol = volumes.get(m["name"])
                if vol is None:
                    fail(f"{cname}: mounts {m['name']}, which is no volume")
                elif ("configMap" in vol or "secret" in vol) and not m.get("readOnly"):
                    fail(f"{cname}: {m['mountPath']} should be mounted read-only")
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                fail(f"{cname}: image {image!r} has no pinned tag")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        fail(f"{cname}: no {part}.{r}")
            env = env_map(c)
            for n in env:
                if not ENV_NAME.match(n):
                    fail(f"{cname}: {n!r} is not a valid environment variable name")
                if n.startswith("CHEXVISION_") and n != "CHEXVISION_CONFIG":
                    top = n[len("CHEXVISION_"):].split("__")[0].lower()
                    if top not in CONFIG_KEYS:
                        fail(f"{cname}: {n} names no config key (the loader would ignore it)")
            args = c.get("args", [])
            if "--config" in args:
                path = args[args.index("--config") + 1]
                cfg_mount = mounts.get(str(Path(path).parent))
                cm = volumes.get(cfg_mount["name"], {}).get("configMap", {}).get("name") if cfg_mount else None
                if cm not in config_maps or Path(path).name not in config_maps[cm].get("data", {}):
                    fail(f"{cname}: --config {path} is no file of a rendered ConfigMap")
                else:
                    text = config_maps[cm]["data"][Path(path).name]
                    cfg = yaml.safe_load(text) or {}
                    parent = cfg.get("inherits")
                    if parent not in config_maps[cm]["data"]:
                        fail(f"{cname}: {path} inherits {parent!r}, not in the ConfigMap")
                    unknown = set(cfg) - CONFIG_KEYS - {"inherits"}
                    if unknown:
                        fail(f"{cname}: {path} has keys the services reject: {sorted(unknown)}")
            else:
                fail(f"{cname}: no --config argument")

        if w["kind"] == "Deployment":
            c = spec["containers"][0]
            env = env_map(c)
            if comp == "inference":
                want = values["inference"]["api"]["port"]
                bind = env.get("CHEXVISION_SERVICE__API__BIND", {}).get("value")
            else:
                want = values["metricsPort"]
                bind = env.get("CHEXVISION_HTTP__BIND", {}).get("value")
            if bind != f"0.0.0.0:{want}":
                fail(f"{wname}: the process binds {bind!r}, the probes expect port {want}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (c.get(probe) or {}).get("httpGet")
                if not get:
                    fail(f"{wname}: no {probe} with httpGet")
                    continue
                if get.get("path") != path:
                    fail(f"{wname}: {probe} on {get.get('path')}, want {path}")
                if resolve_port(c, get.get("port")) != want:
                    fail(f"{wname}: {probe} on port {get.get('port')} = "
                         f"{resolve_port(c, get.get('port'))}, want {want}")

    # ---- the trainer ------------------------------------------------------------
    trainers = [w for w in by_kind.get("Deployment", []) if component_of(w) == "trainer"]
    tv = values["trainer"]
    if tv["enabled"] and len(trainers) != 1:
        fail(f"{len(trainers)} trainer Deployments, want 1")
    for t in trainers:
        spec = t["spec"]["template"]["spec"]
        c = spec["containers"][0]
        limits = c.get("resources", {}).get("limits", {})
        device = env_map(c).get("CHEXVISION_SERVICE__DEVICE", {}).get("value")
        if t["spec"].get("replicas", 1) > 1:
            fail("the trainer has more than one replica")
        if t["spec"].get("strategy", {}).get("type") != "Recreate":
            fail("the trainer's strategy is not Recreate")
        gpu_name = tv["gpu"]["resourceName"]
        if tv["gpu"]["enabled"]:
            if int(limits.get(gpu_name, 0)) < 1:
                fail(f"the trainer requests no {gpu_name}")
            tolerated = any(
                (tol.get("key") == GPU_TAINT["key"] and tol.get("operator") in ("Exists", None, "Equal")
                 and tol.get("effect") in (GPU_TAINT["effect"], None, ""))
                or (tol.get("operator") == "Exists" and not tol.get("key"))
                for tol in spec.get("tolerations", []))
            if not tolerated:
                fail("the trainer does not tolerate the nvidia.com/gpu:NoSchedule taint")
            if device != "cuda" or "-cuda" not in c["image"]:
                fail(f"the GPU trainer runs {c['image']} with device {device!r}")
            pc = spec.get("priorityClassName")
            if not pc:
                fail("the GPU trainer has no priorityClassName")
            elif values["priorityClass"]["create"] and pc not in names("PriorityClass"):
                fail(f"the trainer's priority class {pc} is not rendered")
        else:
            if gpu_name in limits or device != "cpu" or "-cuda" in c["image"]:
                fail("the CPU trainer asks for a GPU, the CUDA image or device")
            if any(tol.get("key") == GPU_TAINT["key"] for tol in spec.get("tolerations", [])):
                fail("the CPU trainer tolerates the GPU taint")

    # ---- what points at what ----------------------------------------------------
    pods = [(w["metadata"]["name"], pod_of(w)["metadata"].get("labels", {})) for w in workloads]
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    for s in services.values():
        hits = [n for n, labels in pods if matches(s["spec"]["selector"], labels)]
        if len(hits) != 1:
            fail(f"Service {s['metadata']['name']} selects {hits}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        hits = [n for n, labels in pods if matches(pdb["spec"]["selector"], labels)]
        if len(hits) != 1:
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} selects {hits}")
    if values["serviceMonitor"]["enabled"]:
        monitored = set()
        for sm in by_kind.get("ServiceMonitor", []):
            hits = [s for s in services.values() if matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
            if len(hits) != 1:
                fail(f"ServiceMonitor {sm['metadata']['name']} selects Services {[h['metadata']['name'] for h in hits]}")
                continue
            ports = {p["name"]: p["port"] for p in hits[0]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ports.get(ep["port"]) != values["metricsPort"] or ep.get("path", "/metrics") != "/metrics":
                    fail(f"ServiceMonitor {sm['metadata']['name']}: scrapes {ep['port']} {ep.get('path')}, "
                         "not /metrics on the operations port")
            monitored.add(component_of(hits[0]))
        missing = {s for s in SERVICES if values[s]["enabled"]} - monitored
        if missing:
            fail(f"no ServiceMonitor for {sorted(missing)}")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"HPA {hpa['metadata']['name']} scales {target}, which is not rendered")
        elif "replicas" in deployments[target]["spec"]:
            fail(f"Deployment {target} sets replicas while an HPA scales it")
        kinds = {(m["type"], (m.get("resource") or {}).get("name") or m.get("pods", {}).get("metric", {}).get("name"))
                 for m in hpa["spec"]["metrics"]}
        want = {("Resource", "cpu")}
        qd = values["inference"]["autoscaling"]["queueDepth"]
        if qd["enabled"]:
            want.add(("Pods", qd["metricName"]))
        if kinds != want:
            fail(f"HPA metrics {sorted(kinds)}, want {sorted(want)}")
    for ing in by_kind.get("Ingress", []):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                port = svc["port"].get("name") or svc["port"].get("number")
                target = services.get(svc["name"])
                if not target or port not in {x["name"] for x in target["spec"]["ports"]} | \
                        {x["port"] for x in target["spec"]["ports"]}:
                    fail(f"Ingress {ing['metadata']['name']} routes to {svc['name']}:{port}, which is not rendered")
                if component_of(target or {"metadata": {}}) != "inference":
                    fail(f"Ingress {ing['metadata']['name']} routes to {svc['name']}, not the inference API")
            tls_hosts = {h for t in ing["spec"].get("tls", []) for h in t.get("hosts", [])}
            if values["inference"]["ingress"]["tls"]["enabled"] and rule.get("host") not in tls_hosts:
                fail(f"Ingress {ing['metadata']['name']}: {rule.get('host')} is served without TLS")

    # ---- NetworkPolicies ------------------------------------------------------
    if values["networkPolicy"]["enabled"]:
        np_values = values["networkPolicy"]
        peers = {n: np_values[n]["to"] for n in ("dns", "kafka", "s3")}
        peers.update({n: np_values[n]["from"] for n in ("prometheus", "inferenceClients")})
        policies = by_kind.get("NetworkPolicy", [])
        for wname, labels in pods:
            covering = [p for p in policies if matches(p["spec"]["podSelector"], labels)]
            if len(covering) != 1:
                fail(f"{wname}: selected by {len(covering)} NetworkPolicies, want 1")
        for p in policies:
            pname = p["metadata"]["name"]
            selected = [n for n, labels in pods if matches(p["spec"]["podSelector"], labels)]
            if len(selected) != 1:
                fail(f"NetworkPolicy {pname} selects {selected}")
                continue
            comp = component_of(next(w for w in workloads if w["metadata"]["name"] == selected[0]))
            if set(p["spec"].get("policyTypes", [])) != {"Ingress", "Egress"}:
                fail(f"NetworkPolicy {pname}: policyTypes must be Ingress and Egress")
            got = set()
            for direction, field in (("ingress", "from"), ("egress", "to")):
                for rule in p["spec"].get(direction) or []:
                    name = next((n for n, v in peers.items() if v == rule.get(field)), None)
                    if name is None:
                        fail(f"NetworkPolicy {pname}: {direction} peers {rule.get(field)} are no configured peers")
                        continue
                    if not rule.get("ports"):
                        fail(f"NetworkPolicy {pname}: {direction} to {name} on every port")
                    for port in rule.get("ports", []):
                        got.add((direction, name, port.get("protocol", "TCP"), port.get("port")))
            want = expected_flows(comp, values)
            if got != want:
                fail(f"NetworkPolicy {pname} allows {sorted(got - want)} beyond the documented flows "
                     f"and lacks {sorted(want - got)}")
    elif "NetworkPolicy" in by_kind:
        fail("networkPolicy.enabled is false, yet NetworkPolicies are rendered")

    # ---- custom resources -----------------------------------------------------
    for d in docs:
        if d["apiVersion"].startswith(CUSTOM_GROUPS) and d["kind"] not in (
                "ServiceMonitor", "PrometheusRule", "KafkaTopic"):
            fail(f"unexpected custom resource {d['kind']} {d['metadata']['name']}")
    return problems


def platform_topics(values: dict) -> dict[str, str]:
    """configs/platform.yaml's topics with the release's config.topics on top."""
    platform = yaml.safe_load((CHART / "configs" / "platform.yaml").read_text(encoding="utf-8"))
    topics = dict(platform["topics"])
    topics.update(((values.get("config") or {}).get("topics")) or {})
    return topics


def check_kafka_topics(docs: list[dict], values: dict, label: str) -> list[str]:
    """Strimzi KafkaTopics: one per platform topic, named as the config names it."""
    problems = []
    got = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    want = platform_topics(values)
    if set(got) != set(want.values()):
        problems.append(f"{label}: KafkaTopics {sorted(got)}, want {sorted(want.values())}")
    st = values["topics"]["strimzi"]
    for name, d in got.items():
        if d["metadata"]["labels"].get("strimzi.io/cluster") != st["cluster"]:
            problems.append(f"{label}: KafkaTopic {name} lacks strimzi.io/cluster: {st['cluster']}")
        if d["spec"]["partitions"] != values["kafka"]["partitions"] or \
                d["spec"]["replicas"] != values["kafka"]["replicationFactor"]:
            problems.append(f"{label}: KafkaTopic {name}: partitions/replicas differ from kafka.*")
    return problems


__all__ = ["check", "check_kafka_topics", "expected_flows", "platform_topics", "ROOT"]
