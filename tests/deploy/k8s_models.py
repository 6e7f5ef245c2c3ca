"""Strict validation of Kubernetes manifests against the official client's models (kubernetes package): every key
must be a field of the model (unknown keys are errors, unlike the client's lenient deserializer), values must have
the field's type, and the models' own required-field checks run by building them."""

from __future__ import annotations

import re

KINDS = {("v1", "Service"): "V1Service", ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
         ("apps/v1", "Deployment"): "V1Deployment", ("apps/v1", "StatefulSet"): "V1StatefulSet",
         ("v1", "Secret"): "V1Secret", ("v1", "ConfigMap"): "V1ConfigMap"}


def check(value, type_name: str, path: str) -> list[str]:
    """Errors of `value` against a model type string ('str', 'List[V1Container]', 'V1PodSpec', ...)."""
    import kubernetes.client as models

    if type_name == "object":  # IntOrString, free-form
        return []
    if type_name in ("str", "datetime", "date"):
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    if type_name == "int":
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: expected an integer"]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [f"{path}: expected true/false"]
    if type_name == "float":
        return [] if isinstance(value, (int, float)) else [f"{path}: expected a number"]
    match = re.fullmatch(r"List\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, v in enumerate(value) for e in check(v, match.group(1), f"{path}[{i}]")]
    match = re.fullmatch(r"Dict\[str, (.+)\]", type_name)
    if match:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [e for k, v in value.items() for e in check(v, match.group(1), f"{path}.{k}")]
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            errors.extend(check(v, model.openapi_types[by_json[key]], f"{path}.{key}"))
    return errors


def build(value: dict, type_name: str):
    """Build the client model (its constructors reject missing required fields with ValueError)."""
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(value, type_name)


def validate(doc: dict) -> list[str]:
    """Errors of one manifest of a core kind."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        return [f"{key}: not a kind this validator knows"]
    errors = check(doc, KINDS[key], doc["kind"])
    if not errors:
        try:
            build(doc, KINDS[key])
        except ValueError as err:
            errors.append(f"{doc['kind']}: {err}")
    return errors
