"""The KubeRay manifests against KubeRay's own CRD schemas, as the Kubernetes API server reads them.

Each manifest of infra/k8s/ (and the RayService as render_rayservice.py writes it from
serve/config.yaml) is checked against the ``openAPIV3Schema`` of its CRD (v1) in two ways:

- validated (types, enums, patterns, required fields) with ``jsonschema``, the OpenAPI
  ``nullable`` and int-or-string conventions turned into JSON Schema;
- walked for fields the schema does not declare where it does not keep unknown fields
  (``x-kubernetes-preserve-unknown-fields``): the API server prunes those silently (or refuses
  them under strict field validation), so a typo such as ``rayStartParam`` is a setting lost.

The CRDs are data shared beside the repository (``../shared/data/kuberay-crds``, see its
README), not copied into it: without them these tests are skipped, saying where they looked.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
CRDS = ROOT.parent / "shared" / "data" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
# The root ``metadata`` is an ObjectMeta, which the API server decodes itself (the CRD schema
# only says ``type: object``); fields outside it are dropped.
OBJECT_META = {
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-1.4 MB of YAML each


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The v1 ``openAPIV3Schema`` of ``kind``'s CRD; skips the test when the shared data is missing."""
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(
            f"KubeRay CRDs not found: expected {path} (shared data beside the repository, "
            "../shared/data/kuberay-crds; see its README)"
        )
    crd = yaml.load(path.read_text(), Loader=Loader)  # a safe loader, C or Python
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind, path
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"], f"{path}: v1 not served"
    return version["schema"]["openAPIV3Schema"]


def json_schema(node: Any) -> Any:
    """An OpenAPI v3 (Kubernetes structural) schema as JSON Schema: ``nullable`` allows null."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def validator(kind: str) -> jsonschema.Draft4Validator:
    schema = json_schema(crd_schema(kind))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    errors = sorted(validator(doc["kind"]).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in errors]


def pruned(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """The paths of the fields of ``value`` that the API server would prune under ``schema``.

    A structural schema declares an object's fields in ``properties``, or its map values in
    ``additionalProperties``; any other field is pruned unless the node has
    ``x-kubernetes-preserve-unknown-fields``. (``anyOf`` and the like only validate values:
    they cannot declare fields.)
    """
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key in properties:
                yield from pruned(item, properties[key], where)
            elif isinstance(extra, dict):
                yield from pruned(item, extra, where)
            elif not (extra is True or keep):
                yield where
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from pruned(item, schema["items"], f"{path}[{i}]")


def pruned_fields(doc: dict[str, Any]) -> list[str]:
    schema = crd_schema(doc["kind"])
    body = {key: value for key, value in doc.items() if key != "metadata"}
    found = list(pruned(body, schema, ""))
    found += [f"metadata.{key}" for key in doc.get("metadata", {}) if key not in OBJECT_META]
    return found


def cel_ruled_fields(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    """Paths set in ``value`` whose schema carries CEL rules (``x-kubernetes-validations``)."""
    if schema.get("x-kubernetes-validations"):
        yield path
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from cel_ruled_fields(item, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from cel_ruled_fields(item, schema["items"], f"{path}[{i}]")


def _rendered_rayservice() -> str:
    """rayservice.yaml as ``render_rayservice.py`` writes it from serve/config.yaml now."""
    spec = importlib.util.spec_from_file_location("render_rayservice", K8S / "render_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render(module.RAYSERVICE.read_text(), module.SERVE_CONFIG.read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    sources = [(path.name, path.read_text()) for path in sorted(K8S.glob("*.yaml"))]
    sources.append(("rayservice.yaml rendered from serve/config.yaml", _rendered_rayservice()))
    out = []
    for name, text in sources:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        out += [(f"{name}#{i}" if len(docs) > 1 else name, d) for i, d in enumerate(docs)]
    return out


MANIFESTS = manifests()


def test_every_manifest_of_infra_k8s_is_checked() -> None:
    names = {name for name, _ in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-batch.yaml", "rayservice.yaml"} <= names
    assert {doc["kind"] for _, doc in MANIFESTS} == set(CRD_FILES)
    assert all(doc["apiVersion"] == "ray.io/v1" for _, doc in MANIFESTS)


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[name for name, _ in MANIFESTS])
def test_manifest_is_valid_under_its_kuberay_crd_and_loses_no_field(name: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == [], name
    assert pruned_fields(doc) == [], f"{name}: the API server would drop these fields"
    # CEL rules are not evaluated here: no manifest may rely on a field that carries them.
    assert list(cel_ruled_fields(doc, crd_schema(doc["kind"]), "")) == [], f"{name}: fields with CEL rules"


def raycluster() -> dict[str, Any]:
    ((_, doc),) = [(n, d) for n, d in MANIFESTS if n == "raycluster.yaml"]
    return copy.deepcopy(doc)


def rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


@pytest.mark.parametrize(
    ("mutate", "pruned_path"),
    [
        (
            lambda d: rename(d["spec"]["headGroupSpec"], "rayStartParams", "rayStartParam"),
            "spec.headGroupSpec.rayStartParam",
        ),
        (
            lambda d: rename(d["spec"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"),
            "spec.enableInTreeAutoScaling",
        ),
        (
            lambda d: rename(d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0], "workingDir", "workDir"),
            "spec.headGroupSpec.template.spec.containers[0].workDir",
        ),
        (lambda d: d["metadata"].update(lables={"app": "deblur"}), "metadata.lables"),
    ],
    ids=["rayStartParam", "enableInTreeAutoScaling", "container workDir", "metadata lables"],
)
def test_a_misspelled_field_fails_the_check(mutate: Any, pruned_path: str) -> None:
    doc = raycluster()
    assert pruned_fields(doc) == []
    mutate(doc)
    assert pruned_fields(doc) == [pruned_path]


def test_a_wrong_type_or_value_fails_the_check() -> None:
    doc = raycluster()
    assert schema_errors(doc) == []
    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    doc["spec"]["authOptions"]["mode"] = "tokens"
    doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "2 cores"
    errors = schema_errors(doc)
    assert [e.split(":")[0] for e in errors] == [
        "spec.authOptions.mode",
        "spec.headGroupSpec.template.spec.containers.0.resources.limits.cpu",
        "spec.workerGroupSpecs.0.maxReplicas",
    ], errors
    del doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]  # required by PodSpec
    assert any("'name' is a required property" in e for e in schema_errors(doc))
