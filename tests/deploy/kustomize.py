"""A small kustomize renderer for the subset deploy/k8s uses (no kubectl/kustomize binary here).

Supported kustomization fields, anything else is an error: `resources` (files or directories
with a kustomization.yaml), `namespace`, `images` (name, newName, newTag) and `patches` given as
`path` to a strategic-merge patch that names its target by apiVersion, kind and metadata.name.
Merge semantics: maps merge recursively, a null value deletes the key, `$patch: delete` at the
top removes the target; for built-in kinds, lists of containers/env/volumes merge by `name`
(volumeMounts by `mountPath`), other lists are replaced; for custom resources every list is
replaced (JSON merge patch, as kustomize does for kinds it has no schema for).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
                  "rbac.authorization.k8s.io"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}


def is_builtin(res: Resource) -> bool:
    api = res["apiVersion"]
    return (api.split("/")[0] if "/" in api else "") in BUILTIN_GROUPS


def load_docs(path: Path) -> list[Resource]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _key(res: Resource) -> tuple[str, str]:
    return res["kind"], res["metadata"]["name"]


def merge(base: Any, patch: Any, builtin: bool, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, builtin, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    key = MERGE_KEYS.get(field) if builtin else None
    if key and isinstance(base, list) and isinstance(patch, list):
        out = [copy.deepcopy(b) for b in base]
        index = {b.get(key): i for i, b in enumerate(out)}
        for item in patch:
            if item[key] in index:
                out[index[item[key]]] = merge(out[index[item[key]]], item, builtin)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for c in v:
                    name, _, tag = c["image"].partition(":")
                    for img in images:
                        if img["name"] == name:
                            c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
            _set_images(v, images)
    elif isinstance(node, list):
        for v in node:
            _set_images(v, images)


def render(directory: Path) -> list[Resource]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields outside the subset: {unknown}")
    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        path = directory / entry
        resources += render(path) if path.is_dir() else load_docs(path)
    keys = [_key(r) for r in resources]
    if len(keys) != len(set(keys)):
        raise ValueError(f"{directory}: duplicate resources {keys}")
    for p in kust.get("patches", []):
        if set(p) != {"path"}:
            raise ValueError(f"{directory}: only `path` patches are supported: {p}")
        for patch in load_docs(directory / p["path"]):
            target = next((i for i, r in enumerate(resources) if _key(r) == _key(patch)), None)
            if target is None:
                raise ValueError(f"{directory}: patch target {_key(patch)} not found")
            if patch.get("$patch") == "delete":
                del resources[target]
            else:
                base = resources[target]
                resources[target] = merge(base, patch, is_builtin(base))
    if "images" in kust:
        _set_images(resources, kust["images"])
    if "namespace" in kust:
        for r in resources:
            if r["kind"] not in CLUSTER_SCOPED:
                r["metadata"]["namespace"] = kust["namespace"]
    return resources
