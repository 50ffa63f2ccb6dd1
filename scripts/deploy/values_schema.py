#!/usr/bin/env python3
"""Writes helm/chexvision/values.schema.json, the chart's values schema.

    python3 scripts/deploy/values_schema.py            # rewrite the file
    python3 scripts/deploy/values_schema.py --check    # fail if it differs

Helm validates the values of every install, upgrade, lint and template
against it, so a wrong type or an unknown key fails before anything reaches
the cluster. Written here rather than by hand because the five services
share most of their keys: each gets the common block inlined with
`additionalProperties: false` (draft-07, which every Helm 3.x and 4 reads;
no `unevaluatedProperties`). Free-form Kubernetes fields (affinity, env,
volumes) are objects or arrays of objects; Kubernetes itself checks them.
`make deploy-check` runs --check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "helm" / "chexvision" / "values.schema.json"


def obj(properties: dict, required: list[str] | None = None, description: str | None = None) -> dict:
    schema: dict = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def string(description: str | None = None, **extra) -> dict:
    schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def integer(minimum: int | None = None, maximum: int | None = None) -> dict:
    schema: dict = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


BOOL = {"type": "boolean"}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECTS = {"type": "array", "items": {"type": "object"}}
PORT = integer(1, 65535)
REF = lambda name: {"$ref": f"#/definitions/{name}"}  # noqa: E731

DEFINITIONS = {
    "quantity": {
        "description": "a Kubernetes quantity: 500m, 2, 1.5, 4Gi",
        "oneOf": [
            {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"},
            {"type": "number", "minimum": 0},
        ],
    },
    "resourceList": {"type": "object", "additionalProperties": REF("quantity")},
    "resources": obj({"requests": REF("resourceList"), "limits": REF("resourceList")}),
    "image": obj({"repository": string(minLength=1), "tag": string()}, ["repository"]),
    "toleration": obj({
        "key": string(),
        "operator": {"enum": ["Exists", "Equal"]},
        "value": string(),
        "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": integer(0),
    }),
    "peer": obj({
        "namespaceSelector": {"type": "object"},
        "podSelector": {"type": "object"},
        "ipBlock": obj({"cidr": string(minLength=1), "except": {"type": "array", "items": {"type": "string"}}},
                       ["cidr"]),
    }),
    "peers": {"type": "array", "items": REF("peer"), "minItems": 1},
    "ports": {"type": "array", "items": PORT, "minItems": 1},
    "envVar": {"type": "object", "required": ["name"], "properties": {"name": string(minLength=1)}},
    "duration": string(pattern=r"^[0-9]+(ms|s|m|h)$"),
}


def service(name: str, extra: dict | None = None, replicas: dict | None = None) -> dict:
    """A service's block: the keys every service has, plus its own."""
    properties = {
        "enabled": BOOL,
        "replicas": replicas or integer(0),
        "image": REF("image"),
        "config": {
            "type": "object",
            "description": f"config keys of {name} on top of configs/{name}.yaml (store, bus, s3, kafka, "
                           "topics, log, http, service)",
            "propertyNames": {"enum": ["store", "bus", "s3", "kafka", "topics", "log", "http", "service"]},
        },
        "env": {"type": "array", "items": REF("envVar")},
        "resources": REF("resources"),
        "nodeSelector": STRING_MAP,
        "tolerations": {"type": "array", "items": REF("toleration")},
        "affinity": {"type": "object"},
        "topologySpreadConstraints": OBJECTS,
        "priorityClassName": string(),
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "serviceAccount": obj({"annotations": STRING_MAP}),
        "pdb": obj({
            "enabled": BOOL,
            "maxUnavailable": {"oneOf": [integer(0), string(pattern=r"^[0-9]{1,3}%$")]},
        }),
        "tmpSizeLimit": REF("quantity"),
        "terminationGracePeriodSeconds": integer(0),
        "extraVolumes": OBJECTS,
        "extraVolumeMounts": OBJECTS,
    }
    properties.update(extra or {})
    return obj(properties)


def schema() -> dict:
    shared_config = {
        "type": "object",
        "additionalProperties": False,
        "description": "the shared config keys (configs/platform.yaml) for every service",
        "properties": {
            "store": string(),
            "bus": string(),
            "s3": {"type": "object"},
            "kafka": {"type": "object"},
            "topics": obj({k: string(minLength=1) for k in (
                "ingest_requests", "shards_raw", "shards_ready", "datasets", "training_requests",
                "checkpoints", "evaluations", "models_promoted", "predictions", "feedback", "dead_letter")}),
            "log": obj({"format": {"enum": ["json", "pretty"]}, "level": string(minLength=1)}),
            "http": {"type": "object"},
        },
    }
    secret_ref = lambda *keys: obj({"existingSecret": string(), **{k: string(minLength=1) for k in keys}})  # noqa: E731

    trainer = service("trainer", replicas=integer(0, 1), extra={
        "gpu": obj({
            "enabled": BOOL,
            "count": integer(1),
            "resourceName": string(pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$"),
            "image": REF("image"),
            "nodeSelector": STRING_MAP,
            "tolerations": {"type": "array", "items": REF("toleration")},
        }),
        "staticMembership": BOOL,
    })
    inference = service("inference", extra={
        "api": obj({"port": PORT, "keys": secret_ref("key")}),
        "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "annotations": STRING_MAP}),
        "autoscaling": obj({
            "enabled": BOOL,
            "minReplicas": integer(1),
            "maxReplicas": integer(1),
            "targetCPUUtilizationPercentage": integer(1, 100),
            "queueDepth": obj({
                "enabled": BOOL,
                "metricName": string(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"),
                "averageValue": REF("quantity"),
            }),
            "behavior": {"type": "object"},
        }),
        "ingress": obj({
            "enabled": BOOL,
            "className": string(),
            "host": string(minLength=1),
            "path": string(pattern=r"^/"),
            "annotations": STRING_MAP,
            "tls": obj({"enabled": BOOL, "secretName": string(minLength=1)}),
        }),
        "spreadAcrossNodes": BOOL,
    })

    properties = {
        "nameOverride": string(),
        "fullnameOverride": string(),
        "commonLabels": STRING_MAP,
        "image": obj({
            "registry": string(),
            "tag": string(),
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            "pullSecrets": {"type": "array", "items": string(minLength=1)},
        }),
        "kafka": obj({
            "bootstrapServers": string("host:port[,host:port]", pattern=r"^[^\s,:/]+:[0-9]+(,[^\s,:/]+:[0-9]+)*$"),
            "partitions": integer(1),
            "replicationFactor": integer(1),
            "properties": {
                "type": "object",
                "description": "librdkafka settings that are not secret; secrets come from kafka.sasl",
                "additionalProperties": {"type": "string"},
                "propertyNames": {"not": {"enum": [
                    "sasl.username", "sasl.password", "ssl.key.password", "ssl.keystore.password",
                    "sasl.oauthbearer.client.secret", "ssl.key.pem"]}},
            },
            "sasl": obj({"existingSecret": string(), "username": string(),
                         "usernameKey": string(minLength=1), "passwordKey": string(minLength=1)}),
            "tls": secret_ref("caKey"),
        }),
        "store": obj({"uri": string("s3://bucket/prefix (or file:///path on a volume)",
                                    pattern=r"^(s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/\S*)?|file:///\S+)$")}),
        "s3": obj({
            "endpoint": string(pattern=r"^(https?://\S+)?$"),
            "region": string(minLength=1),
            "addressing": {"enum": ["auto", "path", "virtual"]},
            "existingSecret": string(),
            "accessKeyIdKey": string(minLength=1),
            "secretAccessKeyKey": string(minLength=1),
        }),
        "config": shared_config,
        "metricsPort": PORT,
        "serviceAccount": obj({"create": BOOL, "annotations": STRING_MAP}),
        "securityContext": obj({
            "runAsUser": integer(1),
            "runAsGroup": integer(0),
            "fsGroup": integer(0),
        }),
        "priorityClass": obj({
            "create": BOOL,
            "name": string(),
            "value": integer(-1000000000, 1000000000),
            "preemptionPolicy": {"enum": ["Never", "PreemptLowerPriority"]},
        }),
        "networkPolicy": obj({
            "enabled": BOOL,
            "dns": obj({"to": REF("peers"), "ports": REF("ports")}),
            "kafka": obj({"to": REF("peers"), "ports": REF("ports")}),
            "s3": obj({"to": REF("peers"), "ports": REF("ports")}),
            "prometheus": obj({"from": REF("peers")}),
            "inferenceClients": obj({"from": REF("peers")}),
        }),
        "serviceMonitor": obj({
            "enabled": BOOL,
            "interval": REF("duration"),
            "scrapeTimeout": REF("duration"),
            "extraLabels": STRING_MAP,
            "namespace": string(),
        }),
        "topics": obj({
            "job": obj({
                "enabled": BOOL,
                "image": REF("image"),
                "backoffLimit": integer(0),
                "activeDeadlineSeconds": integer(1),
                "ttlSecondsAfterFinished": integer(0),
                "resources": REF("resources"),
            }),
            "strimzi": obj({
                "enabled": BOOL,
                "apiVersion": {"enum": ["kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"]},
                "cluster": string(minLength=1),
                "namespace": string(),
                "config": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                "topicConfig": {
                    "type": "object",
                    "propertyNames": {"enum": list(shared_config["properties"]["topics"]["properties"])},
                    "additionalProperties": {"type": "object",
                                             "additionalProperties": {"type": ["string", "number", "boolean"]}},
                },
            }),
        }),
        "ingest": service("ingest"),
        "preprocess": service("preprocess"),
        "trainer": trainer,
        "evaluator": service("evaluator"),
        "inference": inference,
        "grafana": obj({"dashboards": obj({
            "enabled": BOOL,
            "label": string(minLength=1),
            "labelValue": string(),
            "folder": string(),
            "folderAnnotation": string(minLength=1),
            "namespace": string(),
            "extraLabels": STRING_MAP,
            "annotations": STRING_MAP,
        })}),
        "prometheusRule": obj({
            "enabled": BOOL,
            "extraLabels": STRING_MAP,
            "annotations": STRING_MAP,
            "namespace": string(),
            "runbookBaseUrl": string(pattern=r"^(https?://\S+)?$"),
        }),
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "CheXVision Helm chart values (generated by scripts/deploy/values_schema.py)",
        **obj(properties),
        "definitions": DEFINITIONS,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(schema(), indent=2) + "\n"
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} differs from what scripts/deploy/values_schema.py writes; "
                  "regenerate it: python3 scripts/deploy/values_schema.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} matches scripts/deploy/values_schema.py", file=sys.stderr)
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
