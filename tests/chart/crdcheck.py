"""Validate custom resources offline against CustomResourceDefinitions.

kubernetes-validate knows only the built-in kinds, so tokenmesh resources are
checked here the way the API server checks them, as far as that can be done
without one:

- apiVersion and kind name a served version of a CRD; metadata.name is a DNS
  subdomain (and namespace a DNS label) for a namespaced kind;
- defaults of the structural schema are applied first (the API server
  defaults before it validates);
- the structural schema (openAPIV3Schema) is turned into a JSON Schema and
  checked with `jsonschema`: types, enums, patterns, lengths, bounds,
  required fields. `nullable` admits null; unknown fields are errors unless
  the schema says x-kubernetes-preserve-unknown-fields (kubectl's default
  server-side field validation, Strict, refuses them too);
- x-kubernetes-validations rules are CEL: they are evaluated with cel-python
  against the defaulted object, with `self` bound to the value the rule is
  declared on. Transition rules (oldSelf) need an old object and are skipped.
  The Kubernetes CEL library extensions (quantity(), url(), ...) are not
  available; a rule that cannot be compiled or evaluated is reported as an
  error, so an unsupported rule fails loudly rather than passing silently.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import celpy
import jsonschema
import yaml

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class Served:
    group: str
    version: str
    kind: str
    namespaced: bool
    schema: dict  # openAPIV3Schema


def load_crds(folder: Path) -> dict[tuple[str, str], Served]:
    """(apiVersion, kind) -> what the CRDs in `folder` serve."""
    served: dict[tuple[str, str], Served] = {}
    for path in sorted(folder.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                served[key] = Served(
                    group=spec["group"],
                    version=version["name"],
                    kind=spec["names"]["kind"],
                    namespaced=spec["scope"] == "Namespaced",
                    schema=version["schema"]["openAPIV3Schema"],
                )
    return served


def to_json_schema(node: dict) -> dict:
    """An OpenAPI v3 structural schema as a strict JSON Schema (draft 2020-12)."""
    out: dict[str, Any] = {}
    for key in ("enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
                "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
                "uniqueItems", "minProperties", "maxProperties", "required"):
        if key in node:
            out[key] = node[key]
    nullable = node.get("nullable", False)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in node:
        out["type"] = [node["type"], "null"] if nullable else node["type"]
    if nullable and "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    elif node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Pruned (or, with Strict field validation, refused) by the API server.
        out["additionalProperties"] = False
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [to_json_schema(n) for n in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"])
    return out


def apply_defaults(value: Any, node: dict) -> Any:
    """Structural defaulting: a missing property with a `default` gets it."""
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(value[name], child)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in node.get("properties", {}):
                    value[name] = apply_defaults(value[name], extra)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(item, node["items"]) for item in value]
    return value


def cel_rules(value: Any, node: dict, path: str) -> Iterator[tuple[str, dict, Any]]:
    """(path, rule, self) for every x-kubernetes-validations rule that applies."""
    if value is None:
        return
    for rule in node.get("x-kubernetes-validations", []):
        yield path, rule, value
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                yield from cel_rules(value[name], child, f"{path}.{name}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for name, item in value.items():
                if name not in node.get("properties", {}):
                    yield from cel_rules(item, extra, f"{path}[{name!r}]")
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            yield from cel_rules(item, node["items"], f"{path}[{index}]")


_cel = celpy.Environment()
_programs: dict[str, Any] = {}


def evaluate(rule: str, self_value: Any) -> Any:
    if rule not in _programs:
        _programs[rule] = _cel.program(_cel.compile(rule))
    return _programs[rule].evaluate({"self": celpy.json_to_cel(self_value)})


def validate(resource: dict, crds: dict[tuple[str, str], Served]) -> list[str]:
    """Every problem the API server would report for `resource`; [] if none."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    served = crds.get(key)
    if served is None:
        return [f"no served CRD for apiVersion {key[0]!r} kind {key[1]!r}"]
    errors: list[str] = []
    meta = resource.get("metadata") or {}
    name = meta.get("name", "")
    if not (isinstance(name, str) and len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
        errors.append(f"metadata.name: {name!r} is not a DNS subdomain")
    namespace = meta.get("namespace")
    if not served.namespaced and namespace is not None:
        errors.append("metadata.namespace: the kind is cluster-scoped")
    if namespace is not None and not (isinstance(namespace, str) and len(namespace) <= 63 and DNS_LABEL.match(namespace)):
        errors.append(f"metadata.namespace: {namespace!r} is not a DNS label")

    obj = copy.deepcopy(resource)
    root = copy.deepcopy(served.schema)
    root.setdefault("properties", {})
    # apiVersion, kind and metadata are checked above / by the API machinery.
    for field in ("apiVersion", "kind"):
        root["properties"].setdefault(field, {"type": "string"})
    root["properties"]["metadata"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    obj = apply_defaults(obj, root)
    validator = jsonschema.Draft202012Validator(to_json_schema(root))
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{where}: {error.message}")
    if errors:
        # CEL rules run only on objects that pass the structural schema.
        return errors
    for path, rule, self_value in cel_rules(obj, root, ""):
        expression = rule["rule"]
        if "oldSelf" in expression:
            continue  # a transition rule: needs the stored object
        try:
            result = evaluate(expression, self_value)
        except Exception as exc:  # noqa: BLE001: any failure is a refusal
            errors.append(f"{path.lstrip('.') or '(root)'}: rule {expression!r} could not be evaluated: {exc}")
            continue
        if isinstance(result, celpy.evaluation.CELEvalError):
            errors.append(f"{path.lstrip('.') or '(root)'}: rule {expression!r} could not be evaluated: {result}")
            continue
        if not (isinstance(result, (bool, celpy.celtypes.BoolType)) and bool(result)):
            message = rule.get("message") or f"failed rule: {expression}"
            errors.append(f"{path.lstrip('.') or '(root)'}: {message}")
    return errors


def all_rules(crds: dict[tuple[str, str], Served]) -> list[tuple[str, str, str]]:
    """(kind, path, message) of every x-kubernetes-validations rule in the CRDs."""
    found: list[tuple[str, str, str]] = []

    def walk(node: dict, path: str, kind: str) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            found.append((kind, path, rule.get("message") or rule["rule"]))
        for name, child in node.get("properties", {}).items():
            walk(child, f"{path}.{name}", kind)
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]", kind)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}", kind)

    for served in crds.values():
        walk(served.schema, "", served.kind)
    return found
