"""JSON schemas for the custom resources deploy/k8s writes, transcribed by hand from the upstream
CRDs' openAPIV3Schema at the versions named beside each (descriptions left out).

What is kept: at every level our manifests write, all the properties the upstream schema
defines there (so a valid field we do not use yet still passes), with their types, enums,
patterns, bounds and `required` lists; the CEL rules (x-kubernetes-validations) that touch our
fields, written as JSON Schema; sub-objects we do not write are typed only. Embedded Kubernetes
types (ObjectMeta, LabelSelector, PodTemplateSpec...) are referenced from the Kubernetes
definitions that kubernetes-validate bundles, strict, at the version the tests target.
Everywhere, unknown keys fail (`additionalProperties: false`): what the API server's strict field
validation, kubectl's default, does with an unknown field of a structural schema.

Upstream sources (file, tag):
- LeaderWorkerSet leaderworkerset.x-k8s.io/v1: kubernetes-sigs/lws v0.10.0,
  config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml (size >= 1 is the webhook's
  rule, pkg/webhooks/leaderworkerset_webhook.go)
- InferencePool inference.networking.k8s.io/v1: kubernetes-sigs/gateway-api-inference-extension
  v1.5.0 (the EPP version deploy/k8s pins),
  config/crd/bases/inference.networking.k8s.io_inferencepools.yaml
- ServiceMonitor monitoring.coreos.com/v1: prometheus-operator/prometheus-operator v0.93.0,
  example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
- ScaledObject keda.sh/v1alpha1: kedacore/keda v2.20.2, config/crd/bases/keda.sh_scaledobjects.yaml;
  the prometheus trigger's metadata keys from pkg/scalers/prometheus_scaler.go (prometheusMetadata)
  and pkg/scalers/authentication/authentication_types.go (keys read from triggerMetadata)
- HTTPRoute gateway.networking.k8s.io/v1: kubernetes-sigs/gateway-api v1.6.1, standard channel,
  config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource

DEFS = "https://kubernetes.io/api/_definitions.json"  # the $id of kubernetes-validate's file

STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}
OBJECT: dict[str, Any] = {"type": "object"}  # a sub-object we do not write: typed only
ARRAY: dict[str, Any] = {"type": "array"}
INT_OR_STR: dict[str, Any] = {"type": ["integer", "string"]}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": STR}
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
KIND = {"type": "string", "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$", "minLength": 1,
        "maxLength": 63}
GROUP = {"type": "string", "pattern": f"^$|{DNS_SUBDOMAIN}", "maxLength": 253}


def k8s(name: str) -> dict[str, Any]:
    """A Kubernetes type, e.g. io.k8s.api.core.v1.PodTemplateSpec."""
    return {"$ref": f"{DEFS}#/$defs/{name}"}


def obj(props: dict[str, Any], required: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    out = {"type": "object", "properties": props, "additionalProperties": False, **extra}
    if required:
        out["required"] = list(required)
    return out


def arr(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "array", "items": items, **extra}


def integer(minimum: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def string(**extra: Any) -> dict[str, Any]:
    return {"type": "string", **extra}


def custom_resource(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return obj({"apiVersion": {"const": api}, "kind": {"const": kind},
                "metadata": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


PORT = integer(1, 65535)
PORT_NUMBER = obj({"number": PORT}, ("number",))

# --- LeaderWorkerSet (lws v0.10.0) ----------------------------------------------------------
LEADER_WORKER_SET = custom_resource("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", obj({
    "replicas": integer(0, 1000000),
    "leaderWorkerTemplate": obj({
        # the CRD embeds corev1.PodTemplateSpec: the Kubernetes schema of the targeted version
        "leaderTemplate": k8s("io.k8s.api.core.v1.PodTemplateSpec"),
        "workerTemplate": k8s("io.k8s.api.core.v1.PodTemplateSpec"),
        "size": integer(1),
        "restartPolicy": {"enum": ["Default", "RecreateGroupOnPodRestart",
                                   "RecreateGroupAfterStart", "None"]},
        "subGroupPolicy": obj({"subGroupPolicyType": {"enum": ["LeaderWorker",
                                                               "LeaderExcluded"]},
                               "subGroupSize": integer(1)}),
        "volumeClaimTemplates": arr(k8s("io.k8s.api.core.v1.PersistentVolumeClaim")),
        "persistentVolumeClaimRetentionPolicy": obj({"whenDeleted": STR, "whenScaled": STR}),
    }, ("workerTemplate",)),
    "rolloutStrategy": obj({
        "type": {"enum": ["RollingUpdate"]},
        "rollingUpdateConfiguration": obj({"maxSurge": INT_OR_STR, "maxUnavailable": INT_OR_STR,
                                           "partition": integer()}),
    }, ("type",)),
    "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
    "networkConfig": obj({"subdomainPolicy": {"enum": ["Shared", "UniquePerReplica"]}},
                         ("subdomainPolicy",)),
}, ("leaderWorkerTemplate",)))

# --- InferencePool (gateway-api-inference-extension v1.5.0) ---------------------------------
INFERENCE_POOL = custom_resource("inference.networking.k8s.io/v1", "InferencePool", obj({
    "selector": obj({"matchLabels": {
        "type": "object",
        "additionalProperties": string(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
                                       maxLength=63)}}, ("matchLabels",)),
    # CEL: port numbers unique; {number} items, so uniqueItems says the same
    "targetPorts": arr(PORT_NUMBER, minItems=1, maxItems=8, uniqueItems=True),
    "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
    "endpointPickerRef": obj({
        "group": GROUP, "kind": KIND, "name": string(minLength=1, maxLength=253),
        "port": PORT_NUMBER, "failureMode": {"enum": ["FailOpen", "FailClose"]},
    }, ("name",),
        # CEL: self.kind != 'Service' || has(self.port); kind defaults to Service
        anyOf=[{"required": ["port"]},
               {"required": ["kind"], "properties": {"kind": {"not": {"const": "Service"}}}}]),
}, ("endpointPickerRef", "selector", "targetPorts")))

# --- ServiceMonitor (prometheus-operator v0.93.0) -------------------------------------------
DURATION = string(pattern=r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                          r"(([0-9]+)s)?(([0-9]+)ms)?)$")
SCRAPE_PROTOCOL = {"enum": ["PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0",
                            "PrometheusText0.0.4", "PrometheusText1.0.0"]}
COUNT = integer(0)
ENDPOINT = obj({
    "port": STR, "targetPort": INT_OR_STR, "path": STR,
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "params": {"type": "object", "additionalProperties": arr(STR)},
    "interval": DURATION, "scrapeTimeout": DURATION,
    "honorLabels": BOOL, "honorTimestamps": BOOL, "trackTimestampsStaleness": BOOL,
    "filterRunning": BOOL, "followRedirects": BOOL, "enableHttp2": BOOL,
    "relabelings": arr(OBJECT), "metricRelabelings": arr(OBJECT),
    "authorization": OBJECT, "basicAuth": OBJECT, "bearerTokenFile": STR,
    "bearerTokenSecret": OBJECT, "oauth2": OBJECT, "tlsConfig": OBJECT,
    "proxyUrl": string(pattern=r"^(http|https|socks5)://.+$"), "noProxy": STR,
    "proxyFromEnvironment": BOOL,
    "proxyConnectHeader": {"type": "object", "additionalProperties": ARRAY},
})
SERVICE_MONITOR = custom_resource("monitoring.coreos.com/v1", "ServiceMonitor", obj({
    "selector": k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
    "endpoints": arr(ENDPOINT),
    "namespaceSelector": obj({"any": BOOL, "matchNames": arr(STR)}),
    "jobLabel": STR, "targetLabels": arr(STR), "podTargetLabels": arr(STR),
    "attachMetadata": obj({"node": BOOL}),
    "selectorMechanism": {"enum": ["RelabelConfig", "RoleSelector"]},
    "serviceDiscoveryRole": {"enum": ["Endpoints", "EndpointSlice"]},
    "scrapeClass": string(minLength=1),
    "scrapeProtocols": arr(SCRAPE_PROTOCOL, uniqueItems=True),
    "fallbackScrapeProtocol": SCRAPE_PROTOCOL,
    "scrapeClassicHistograms": BOOL, "scrapeNativeHistograms": BOOL,
    "convertClassicHistogramsToNHCB": BOOL,
    "nativeHistogramBucketLimit": COUNT, "nativeHistogramMinBucketFactor": INT_OR_STR,
    "bodySizeLimit": string(pattern=r"(^0|([0-9]*[.])?[0-9]+((K|M|G|T|E|P)i?)?B)$"),
    "sampleLimit": COUNT, "targetLimit": COUNT, "labelLimit": COUNT,
    "labelNameLengthLimit": COUNT, "labelValueLengthLimit": COUNT, "keepDroppedTargets": COUNT,
}, ("endpoints", "selector")))

# --- ScaledObject (KEDA v2.20.2) --------------------------------------------------------------
# The CRD types trigger metadata as a map of strings; the prometheus scaler reads these keys
# (unknown ones are ignored by KEDA, so a misspelt optional key would silently do nothing).
# Beyond the scaler's own checks: a number for the thresholds, a URL with its scheme.
NUMBER = string(pattern=r"^-?[0-9]+(\.[0-9]+)?$")
PROMETHEUS_METADATA = obj({
    "serverAddress": string(pattern=r"^https?://"), "query": string(minLength=1),
    "threshold": NUMBER, "activationThreshold": NUMBER, "queryParameters": STR,
    "namespace": STR, "customHeaders": STR, "ignoreNullValues": {"enum": ["true", "false"]},
    "unsafeSsl": {"enum": ["true", "false"]}, "awsRegion": STR, "timeout": STR,
    "identityOwner": STR, "authModes": STR, "authMode": STR, "apiKey": STR,
    "method": {"enum": ["header", "query"]}, "keyParamName": STR,
}, ("serverAddress", "query", "threshold"))
TRIGGER = obj({
    "type": string(minLength=1), "name": STR, "metadata": STRING_MAP,
    "authenticationRef": obj({"name": STR, "kind": {"enum": ["TriggerAuthentication",
                                                             "ClusterTriggerAuthentication"]}},
                             ("name",)),
    # an autoscaling/v2 MetricTargetType (the CRD leaves it a string; KEDA's webhook checks it)
    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
    "useCachedMetrics": BOOL,
}, ("metadata", "type"), allOf=[{
    "if": {"properties": {"type": {"const": "prometheus"}}},
    "then": {"properties": {"metadata": PROMETHEUS_METADATA}},
}])
SCALED_OBJECT = custom_resource("keda.sh/v1alpha1", "ScaledObject", obj({
    "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": string(minLength=1),
                           "envSourceContainerName": STR}, ("name",)),
    "pollingInterval": integer(1), "cooldownPeriod": integer(0),
    "initialCooldownPeriod": integer(0), "idleReplicaCount": integer(0),
    "minReplicaCount": integer(0), "maxReplicaCount": integer(1),
    "triggers": arr(TRIGGER, minItems=1),
    "fallback": obj({"failureThreshold": integer(0), "replicas": integer(0),
                     "behavior": {"enum": ["static", "currentReplicas", "currentReplicasIfHigher",
                                           "currentReplicasIfLower", "scalingModifiers"]}},
                    ("failureThreshold", "replicas")),
    "advanced": obj({
        "horizontalPodAutoscalerConfig": obj({
            "name": STR,
            "behavior": k8s("io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior")}),
        "restoreToOriginalReplicaCount": BOOL,
        "scalingModifiers": obj({"formula": STR, "target": STR, "activationTarget": STR,
                                 "metricType": {"enum": ["AverageValue", "Value"]}}),
    }),
}, ("scaleTargetRef", "triggers")))

# --- HTTPRoute (Gateway API v1.6.1, standard channel) ---------------------------------------
PARENT_REF = obj({
    "group": GROUP, "kind": KIND, "name": string(minLength=1, maxLength=253),
    "namespace": string(pattern=DNS_LABEL, minLength=1, maxLength=63),
    "sectionName": string(pattern=DNS_SUBDOMAIN, minLength=1, maxLength=253), "port": PORT,
}, ("name",))
HEADER_NAME = string(pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$", minLength=1, maxLength=256)
PATH_MATCH = obj({"type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]},
                  "value": string(maxLength=1024)},
                 # CEL: an Exact or PathPrefix value starts with '/' (type defaults to PathPrefix)
                 anyOf=[{"properties": {"type": {"const": "RegularExpression"}},
                         "required": ["type"]},
                        {"properties": {"value": {"pattern": "^/"}}}])
MATCH = obj({
    "path": PATH_MATCH,
    "headers": arr(obj({"name": HEADER_NAME, "type": {"enum": ["Exact", "RegularExpression"]},
                        "value": string(minLength=1, maxLength=4096)}, ("name", "value")),
                   maxItems=16),
    "queryParams": arr(obj({"name": HEADER_NAME, "type": {"enum": ["Exact", "RegularExpression"]},
                            "value": string(minLength=1, maxLength=1024)}, ("name", "value")),
                       maxItems=16),
    "method": {"enum": ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                        "PATCH"]},
})
FILTER = {"type": "object", "required": ["type"]}  # we write none: typed only
BACKEND_REF = obj({
    "group": GROUP, "kind": KIND, "name": string(minLength=1, maxLength=253),
    "namespace": string(pattern=DNS_LABEL, minLength=1, maxLength=63), "port": PORT,
    "weight": integer(0, 1000000), "filters": arr(FILTER, maxItems=16),
}, ("name",),
    # CEL: (group == '' && kind == 'Service') ? has(port); defaults group '' and kind Service
    anyOf=[{"required": ["port"]},
           {"required": ["group"], "properties": {"group": {"not": {"const": ""}}}},
           {"required": ["kind"], "properties": {"kind": {"not": {"const": "Service"}}}}])
HTTP_ROUTE = custom_resource("gateway.networking.k8s.io/v1", "HTTPRoute", obj({
    "parentRefs": arr(PARENT_REF, maxItems=32),
    "hostnames": arr(string(minLength=1, maxLength=253), maxItems=16),
    "rules": arr(obj({
        "name": string(pattern=DNS_SUBDOMAIN, minLength=1, maxLength=253),
        "matches": arr(MATCH, maxItems=64),
        "filters": arr(FILTER, maxItems=16),
        "backendRefs": arr(BACKEND_REF, maxItems=16),
        "timeouts": obj({"request": string(pattern=r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"),
                         "backendRequest": string(pattern=r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")}),
    }), minItems=1, maxItems=16),
}))

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"]): s
    for s in (LEADER_WORKER_SET, INFERENCE_POOL, SERVICE_MONITOR, SCALED_OBJECT, HTTP_ROUTE)
}


@cache
def _registry(k8s_version: str) -> Registry:
    path = (resources.files("kubernetes_validate") / "kubernetes-json-schema"
            / f"v{k8s_version}-local-strict" / "_definitions.json")
    defs = json.loads(path.read_text())
    assert defs["$id"] == DEFS, defs["$id"]
    return Resource.from_contents(defs) @ Registry()


def cel_errors(resource: dict[str, Any]) -> list[str]:
    """The upstream CEL rules that compare two fields (JSON Schema cannot)."""
    spec = resource["spec"]
    # keda.sh_scaledobjects.yaml: minReplicaCount <= maxReplicaCount (100 when unset)
    if (resource["kind"] == "ScaledObject"
            and spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100)):
        return ["spec.minReplicaCount > spec.maxReplicaCount"]
    return []


def validator(resource: dict[str, Any], k8s_version: str) -> jsonschema.Draft202012Validator:
    """The validator for a custom resource, by apiVersion and kind (KeyError if none)."""
    schema = SCHEMAS[(resource["apiVersion"], resource["kind"])]
    return jsonschema.Draft202012Validator(schema, registry=_registry(k8s_version))
