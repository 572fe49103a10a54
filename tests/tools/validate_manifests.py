#!/usr/bin/env python3
"""Validates a `tollgate render --format istio` stream offline, as `kubectl apply` would:
Istio kinds against the OpenAPI v3 schema in Istio's own CRDs (unknown fields refused, as
kubectl's strict field validation does), Kubernetes built-in kinds against their published
schemas (kubernetes-validate, strict). CEL rules and Istio's admission webhook are not run.

usage: validate_manifests.py CRDS.yaml MANIFESTS.yaml
"""
import copy
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """OpenAPI structural schema -> JSON Schema that refuses fields the CRD does not declare."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schemas(path):
    schemas = {}
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if schema is None:
                    continue
                schema = copy.deepcopy(schema)
                # metadata is checked by the API server itself, not by the CRD schema.
                schema.get("properties", {}).pop("metadata", None)
                schema = strict(schema)
                schema["properties"]["metadata"] = {"type": "object"}
                schema["properties"]["apiVersion"] = {"type": "string"}
                schema["properties"]["kind"] = {"type": "string"}
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = schema
    return schemas


def main():
    crds, manifests = sys.argv[1], sys.argv[2]
    schemas = crd_schemas(crds)
    k8s_version = kubernetes_validate.utils.latest_version()
    failures = 0
    count = 0
    with open(manifests) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for doc in docs:
        count += 1
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = f"{kind} {doc.get('metadata', {}).get('namespace')}/{doc.get('metadata', {}).get('name')}"
        try:
            if (api, kind) in schemas:
                jsonschema.validate(doc, schemas[(api, kind)])
                how = "Istio CRD schema"
            elif "." in api.split("/")[0] and api.split("/")[0] not in ("apps",):
                raise SystemExit(f"{name}: no schema known for {api} {kind}")
            else:
                kubernetes_validate.validate(doc, k8s_version, strict=True)
                how = f"Kubernetes {k8s_version} schema"
            print(f"valid: {name} ({api}, {how})")
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            failures += 1
            where = getattr(e, "json_path", "")
            print(f"INVALID: {name}: {where}: {getattr(e, 'message', e)}", file=sys.stderr)
    if count == 0:
        raise SystemExit("no documents to validate")
    if failures:
        raise SystemExit(f"{failures} of {count} documents are invalid")
    print(f"all {count} documents valid")


if __name__ == "__main__":
    main()
