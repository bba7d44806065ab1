"""Structural JSON schemas for the custom resources deploy/k8s uses (their CRDs are not in the
Kubernetes schemas): required fields, types, and no unknown keys at the levels we write."""

from __future__ import annotations

from typing import Any

OBJ = "object"


def strict(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": OBJ, "properties": props, "required": required,
            "additionalProperties": False}


META = {"type": OBJ, "required": ["name"], "properties": {"name": {"type": "string"}}}
STR, INT = {"type": "string"}, {"type": "integer", "minimum": 0}
MATCH_LABELS = strict({"matchLabels": {"type": OBJ, "minProperties": 1}}, ["matchLabels"])
PORT = strict({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}, ["number"])


def resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return strict({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": META,
                   "spec": spec}, ["apiVersion", "kind", "metadata", "spec"])


PROMETHEUS_TRIGGER = strict({
    "type": {"const": "prometheus"},
    "metadata": strict({"serverAddress": STR, "query": STR, "threshold": STR,
                        "activationThreshold": STR, "namespace": STR},
                       ["serverAddress", "query", "threshold"]),
}, ["type", "metadata"])

SCHEMAS: dict[str, dict[str, Any]] = {
    "ScaledObject": resource("keda.sh/v1alpha1", "ScaledObject", strict({
        "scaleTargetRef": strict({"apiVersion": STR, "kind": STR, "name": STR}, ["name"]),
        "minReplicaCount": INT, "maxReplicaCount": INT, "pollingInterval": INT,
        "cooldownPeriod": INT, "initialCooldownPeriod": INT,
        "triggers": {"type": "array", "minItems": 1, "items": PROMETHEUS_TRIGGER},
    }, ["scaleTargetRef", "triggers"])),
    "ServiceMonitor": resource("monitoring.coreos.com/v1", "ServiceMonitor", strict({
        "selector": MATCH_LABELS,
        "endpoints": {"type": "array", "minItems": 1, "items": strict(
            {"port": STR, "path": STR, "interval": {"type": "string", "pattern": "^[0-9]+s$"}},
            ["port"])},
    }, ["selector", "endpoints"])),
    "LeaderWorkerSet": resource("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", strict({
        "replicas": INT,
        "leaderWorkerTemplate": strict({
            "size": {"type": "integer", "minimum": 2},
            "restartPolicy": {"enum": ["RecreateGroupOnPodRestart", "None"]},
            "leaderTemplate": {"type": OBJ}, "workerTemplate": {"type": OBJ},
        }, ["size", "workerTemplate"]),
    }, ["leaderWorkerTemplate"])),
    "InferencePool": resource("inference.networking.k8s.io/v1", "InferencePool", strict({
        "selector": MATCH_LABELS,
        "targetPorts": {"type": "array", "minItems": 1, "items": PORT},
        "endpointPickerRef": strict({
            "name": STR, "kind": STR, "group": STR, "port": PORT,
            "failureMode": {"enum": ["FailOpen", "FailClose"]}}, ["name", "port"]),
    }, ["selector", "targetPorts", "endpointPickerRef"])),
    "HTTPRoute": resource("gateway.networking.k8s.io/v1", "HTTPRoute", strict({
        "parentRefs": {"type": "array", "minItems": 1, "items": strict(
            {"group": STR, "kind": STR, "name": STR, "namespace": STR}, ["name"])},
        "rules": {"type": "array", "minItems": 1, "items": strict({
            "matches": {"type": "array"},
            "backendRefs": {"type": "array", "minItems": 1, "items": strict(
                {"group": STR, "kind": STR, "name": STR}, ["name"])},
        }, ["backendRefs"])},
    }, ["parentRefs", "rules"])),
}
