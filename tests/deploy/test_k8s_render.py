"""Both overlays render with `kubectl kustomize`, and every rendered object validates
offline: built-in kinds against the Kubernetes 1.37 schemas of kubernetes-validate
(strict: unknown fields fail), custom resources against a schema named here per kind."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from k8s_tree import K8S, OVERLAYS, REPO

from services.routing.domain.catalog import parse_catalog

KUBERNETES_VERSION = "1.37"
SCHEMAS = Path(__file__).parent / "schemas"
# Custom resources, by (apiVersion, kind): checked against their own schema, never skipped.
CUSTOM_RESOURCE_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): SCHEMAS / "cnpg-cluster-v1.json",
}


def validate(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CUSTOM_RESOURCE_SCHEMAS:
        schema = json.loads(CUSTOM_RESOURCE_SCHEMAS[key].read_text())
        jsonschema.Draft202012Validator(schema).validate(obj)
        return
    # SchemaNotFoundError (an unknown kind) propagates: a new CRD needs a schema above.
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_its_schema(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    assert len(objects) > 40
    failures = []
    for obj in objects:
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {error.message}")
    assert failures == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lands_in_the_tokenforge_namespace(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for obj in rendered[overlay]:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "tokenforge"
            assert obj["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert obj["metadata"].get("namespace") == "tokenforge", obj["metadata"]["name"]


def test_a_kind_without_a_schema_is_an_error_not_a_skip() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(unknown)


def test_the_strict_schemas_catch_a_misspelled_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    deployment = copy.deepcopy(named(rendered["prod"], "Deployment")["wallet"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_the_cloudnativepg_schema_catches_a_misspelled_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cluster = copy.deepcopy(named(rendered["prod"], "Cluster")["tokenforge-pg"])
    validate(cluster)
    cluster["spec"]["storage"]["sise"] = "10Gi"
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)
    cluster = copy.deepcopy(named(rendered["prod"], "Cluster")["tokenforge-pg"])
    cluster["spec"]["instances"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate(cluster)


def test_the_base_catalog_is_the_bundled_demo_catalog() -> None:
    bundled = REPO / "services" / "routing" / "catalog" / "demo.yaml"
    assert (K8S / "base" / "catalog.yaml").read_bytes() == bundled.read_bytes(), (
        "deploy/k8s/base/catalog.yaml is a copy of services/routing/catalog/demo.yaml "
        "(kustomize reads files under the kustomization only): copy it again"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_catalog_parses_and_every_channel_has_its_secret_name(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    maps = [o for o in rendered[overlay] if o["metadata"]["name"].startswith("tokenforge-catalog")]
    assert len(maps) == 1
    text = maps[0]["data"]["catalog.yaml"]
    catalog = parse_catalog(text.encode(), f"{overlay} catalog", {})
    assert catalog.version
    secret_names = {
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.strip().startswith("secret_name:")
    }
    assert secret_names, "every channel names the secret that holds its key"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_point_at_the_rendered_services(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    settings = next(
        o["data"] for o in objects if o["metadata"]["name"].startswith("tokenforge-settings")
    )
    services = named(objects, "Service")
    for svc in ("routing", "wallet", "payments", "usage", "gateway"):
        host, port = settings[f"TOKENFORGE_{svc.upper()}_ADDR"].split(":")
        assert host in services
        assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    nats_host, nats_port = settings["NATS_ADDRESS"].split(":")
    assert int(nats_port) in {p["port"] for p in services[nats_host]["spec"]["ports"]}
    assert settings["TOKENFORGE_BIND_HOST"] == "0.0.0.0"
    assert settings["TOKENFORGE_GRPC_PORT"] == "50051"
    assert settings["TOKENFORGE_HTTP_PORT"] == "8080"
    assert settings["TOKENFORGE_METRICS_PORT"] == "9464"
    assert settings["TOKENFORGE_METRICS_HOST"] == "0.0.0.0"  # loopback unless set
    assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector.")
    assert settings["TOKENFORGE_CATALOG_PATH"] == "/etc/tokenforge/catalog/catalog.yaml"


def test_dev_runs_one_replica_and_postgres_and_nats_jetstream_on_volumes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["dev"]
    for name, deployment in named(objects, "Deployment").items():
        assert deployment["spec"].get("replicas", 1) == 1, name
    assert "gateway" not in named(objects, "HorizontalPodAutoscaler")
    sets = named(objects, "StatefulSet")
    assert set(sets) == {"postgres", "nats"}
    for statefulset in sets.values():
        assert statefulset["spec"]["replicas"] == 1
        assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    nats_conf = next(
        o["data"]["nats.conf"] for o in objects if o["metadata"]["name"].startswith("nats-config")
    )
    assert "jetstream" in nats_conf and "store_dir: /data/jetstream" in nats_conf


def test_prod_runs_two_or_more_replicas_cloudnativepg_three_nats_and_tls_ingress(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["prod"]
    hpa = named(objects, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["minReplicas"] >= 2
    for name, deployment in named(objects, "Deployment").items():
        if name != "gateway":
            assert deployment["spec"]["replicas"] >= 2, name
    assert "replicas" not in named(objects, "Deployment")["gateway"]["spec"], (
        "the HPA owns the gateway's replica count"
    )
    cluster = named(objects, "Cluster")["tokenforge-pg"]
    assert cluster["spec"]["instances"] >= 3
    assert cluster["spec"]["inheritedMetadata"]["labels"]["tokenforge.io/role"] == "database"
    # tokenforge-pg-superuser, from which the Job tokenforge-db-roles' Secret is made.
    assert cluster["spec"]["enableSuperuserAccess"] is True
    assert named(objects, "Job")["tokenforge-db-roles"]["spec"]["template"]["spec"]["containers"][
        0
    ]["image"].startswith("registry.example.com/tokenforge:")
    assert "postgres" not in named(objects, "StatefulSet")
    nats = named(objects, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    nats_conf = next(
        o["data"]["nats.conf"] for o in objects if o["metadata"]["name"].startswith("nats-config")
    )
    for i in range(3):
        assert f"nats://nats-{i}.nats-headless:6222" in nats_conf
    assert "jetstream" in nats_conf
    ingress = named(objects, "Ingress")["gateway"]
    assert ingress["spec"]["tls"][0]["secretName"] == "gateway-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gateway", "port": {"name": "http"}}
    assert named(objects, "Deployment")["gateway"]["spec"]["template"]["spec"]["containers"][0][
        "image"
    ].startswith("registry.example.com/tokenforge:")


def test_the_capacity_model_plans_with_what_the_prod_overlay_sets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The model's replicas and HPA figures (docs/PERFORMANCE.md) come from these: the
    gateway's HPA bounds and the CPU request its 70% target is a share of (one core:
    one replica is one Python process, planned at 70% of a core busy)."""
    from bench import capacity_bench as model

    objects = rendered["prod"]
    hpa = named(objects, "HorizontalPodAutoscaler")["gateway"]["spec"]
    assert hpa["maxReplicas"] == model.PROD_GATEWAY_MAX
    assert hpa["minReplicas"] == model.PROD_MIN_REPLICAS
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert model.REPLICA_TARGET == 0.7
    gateway = named(objects, "Deployment")["gateway"]["spec"]["template"]["spec"]
    cpu = gateway["containers"][0]["resources"]["requests"]["cpu"]
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    assert cores == model.PROD_GATEWAY_CPU_REQUEST == model.REPLICA_CORES
