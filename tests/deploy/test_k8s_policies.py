"""The rules a platform team reviews, asserted on the rendered objects of both overlays:
locked-down containers with limits and probes, a PDB over every workload, no real secret
in the tree, migrations before serving, and NetworkPolicies that allow exactly the flows
of the system (evaluated here as Kubernetes evaluates them)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from k8s_tree import OVERLAYS

Obj = dict[str, Any]
NAMESPACE = "tokenforge"
SERVICES = ("gateway", "routing", "wallet", "payments", "usage")
# Every service owns a schema (the gateway: idempotency records); the Job db-roles makes
# each service's role the owner of its schema.
DATABASE_CLIENTS = {"gateway", "routing", "wallet", "payments", "usage", "db-roles"}
NATS_CLIENTS = {"wallet", "payments"}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Run to completion: no probes, no disruption budget.
RUN_ONCE_KINDS = ("Job",)


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(workload: Obj) -> list[tuple[str, Obj]]:
    spec = workload["spec"]["template"]["spec"]
    return [("init", c) for c in spec.get("initContainers", [])] + [
        ("main", c) for c in spec["containers"]
    ]


def label_of(workload: Obj) -> str:
    return str(workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"])


# ---- containers ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_non_root_read_only_without_privileges(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    checked = 0
    for workload in workloads(rendered[overlay]):
        pod = workload["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext", {})
        name = workload["metadata"]["name"]
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, name
        for _, container in containers(workload):
            sc = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") is not True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_probes(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    for workload in workloads(rendered[overlay]):
        for role, container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
            if role == "main" and workload["kind"] not in RUN_ONCE_KINDS:
                # init containers run to completion; Kubernetes forbids probes
                assert "readinessProbe" in container and "livenessProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_are_probed_on_grpc_health_and_the_gateway_on_healthz(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    deployments = {d["metadata"]["name"]: d for d in workloads(rendered[overlay])}
    for name in SERVICES:
        main = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert main["args"] == ["serve", name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if name == "gateway":
                assert main[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
            else:
                assert main[probe]["grpc"] == {"port": 50051}, f"{name} {probe}"
        spread = deployments[name]["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_carry_a_tag_and_our_services_all_run_the_same_image(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    ours = set()
    for workload in workloads(rendered[overlay]):
        for _, container in containers(workload):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", image
            if label_of(workload) in SERVICES:
                ours.add(image)
    assert len(ours) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_database_service_migrates_its_schema_before_it_serves(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    deployments = {d["metadata"]["name"]: d for d in workloads(rendered[overlay])}
    for name in SERVICES:
        spec = deployments[name]["spec"]["template"]["spec"]
        inits = spec.get("initContainers", [])
        if name not in DATABASE_CLIENTS:
            assert inits == []
            continue
        assert [c["name"] for c in inits] == ["migrate"]
        assert inits[0]["args"] == ["migrate", name]
        assert inits[0]["image"] == spec["containers"][0]["image"]
        env = {e["name"]: e for e in inits[0]["env"]}
        assert env["TOKENFORGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "uri"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_port_targets_a_named_container_port(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    pods = {label_of(w): w["spec"]["template"]["spec"] for w in workloads(objects)}
    for service in (o for o in objects if o["kind"] == "Service"):
        selected = service["spec"]["selector"]["app.kubernetes.io/name"]
        names = {p["name"] for c in pods[selected]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}:{port['name']}"


# ---- disruption budgets -------------------------------------------------------------------


def matches(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_covered_by_a_disruption_budget(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for workload in workloads(objects):
        if workload["kind"] in RUN_ONCE_KINDS:
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if matches(b["spec"]["selector"], labels)]
        assert len(covering) == 1, workload["metadata"]["name"]
        assert covering[0]["spec"].get("maxUnavailable") == 1
    for cluster in (o for o in objects if o["kind"] == "Cluster"):
        assert cluster["spec"].get("enablePDB", True) is True  # CloudNativePG makes its own


# ---- secrets ------------------------------------------------------------------------------

SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "_KEY", "DATABASE_URL", "CREDENTIAL")


def looks_secret(env_name: str) -> bool:
    name = env_name.upper().replace("TOKENFORGE_", "")
    return any(word in name for word in SECRET_WORDS)


def test_dev_secrets_hold_only_placeholders(rendered: dict[str, list[Obj]]) -> None:
    secrets = [o for o in rendered["dev"] if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "tokenforge-tokens",
        "tokenforge-operator",
        "tokenforge-pg-app",
        "tokenforge-pg-admin",
        *(f"tokenforge-pg-{name}" for name in SERVICES),
        "tokenforge-channel-secrets",
        "tokenforge-nats",
    }
    for secret in secrets:
        assert "stringData" not in secret
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            if key in ("username", "admin-token-sha256"):
                continue
            assert "dev-only" in value, f"{secret['metadata']['name']}/{key} is not a placeholder"


def secret_values(objects: list[Obj], name: str) -> dict[str, str]:
    [secret] = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == name]
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_refs(container: Obj) -> set[tuple[str, str]]:
    """(Secret, key) pairs a container reads (envFrom reads every key: "*")."""
    refs = set()
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs.add((ref["name"], ref["key"]))
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            refs.add((source["secretRef"]["name"], "*"))
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_pod_holds_the_admin_token_and_every_service_verifies_its_digest(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Operators hold the admin token; a service needs only to check it (issue 17)."""
    for workload in workloads(rendered[overlay]):
        for _, container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "TOKENFORGE_ADMIN_TOKEN" not in env_of(container), where
            for secret, key in secret_refs(container):
                assert secret != "tokenforge-operator", where
                assert (secret, key) != ("tokenforge-tokens", "admin-token"), where
    deployments = {d["metadata"]["name"]: d for d in workloads(rendered[overlay])}
    for name in SERVICES:
        main = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        ref = env_of(main)["TOKENFORGE_ADMIN_TOKEN_SHA256"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("tokenforge-tokens", "admin-token-sha256")


def test_the_dev_digest_is_the_dev_admin_tokens(rendered: dict[str, list[Obj]]) -> None:
    token = secret_values(rendered["dev"], "tokenforge-operator")["admin-token"]
    digest = secret_values(rendered["dev"], "tokenforge-tokens")["admin-token-sha256"]
    assert digest == hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_to_postgresql_as_its_own_role(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Its own Secret for migrations and serving; only the Job db-roles reads the
    superuser's URL, and it gets every service's URL to create the roles from."""
    objects = rendered[overlay]
    readers: dict[str, set[str]] = {}
    for workload in workloads(objects):
        for _, container in containers(workload):
            for secret, _ in secret_refs(container):
                readers.setdefault(secret, set()).add(label_of(workload))
    assert readers["tokenforge-pg-admin"] == {"db-roles"}
    assert "tokenforge-pg-app" not in readers or overlay == "dev"
    assert readers.get("tokenforge-pg-app", set()) <= {"postgres"}
    deployments = {d["metadata"]["name"]: d for d in workloads(objects)}
    for name in SERVICES:
        assert readers[f"tokenforge-pg-{name}"] == {name, "db-roles"}
        for _, container in containers(deployments[name]):
            ref = env_of(container)["TOKENFORGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (f"tokenforge-pg-{name}", "uri")
    [job] = [w for w in workloads(objects) if w["kind"] == "Job"]
    [roles] = job["spec"]["template"]["spec"]["containers"]
    assert roles["args"] == ["db-roles"]
    env = env_of(roles)
    assert env["TOKENFORGE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == (
        "tokenforge-pg-admin"
    )
    for name in SERVICES:
        ref = env[f"TOKENFORGE_{name.upper()}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (f"tokenforge-pg-{name}", "uri")
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # the next apply runs it again


def test_dev_roles_are_named_for_their_service_each_with_its_own_password(
    rendered: dict[str, list[Obj]],
) -> None:
    passwords = set()
    for name in SERVICES:
        uri = urlsplit(secret_values(rendered["dev"], f"tokenforge-pg-{name}")["uri"])
        assert uri.username == f"tokenforge_{name}"
        assert uri.hostname == "postgres" and uri.path == "/tokenforge"
        passwords.add(uri.password)
    assert len(passwords) == len(SERVICES)


def test_prod_renders_no_secret_at_all(rendered: dict[str, list[Obj]]) -> None:
    assert [o["metadata"]["name"] for o in rendered["prod"] if o["kind"] == "Secret"] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_reach_containers_from_secrets_only(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    for config_map in (o for o in objects if o["kind"] == "ConfigMap"):
        for key in config_map.get("data", {}):
            assert not looks_secret(key), f"{config_map['metadata']['name']}/{key}"
    for workload in workloads(objects):
        for _, container in containers(workload):
            for env in container.get("env", []):
                if looks_secret(env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]


# ---- network policies ---------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None)."""

    name: str
    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    ports: tuple[int, ...] = ()


def pods(objects: list[Obj]) -> list[Endpoint]:
    found = []
    for workload in workloads(objects):
        template = workload["spec"]["template"]
        ports = tuple(
            p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        )
        found.append(Endpoint(label_of(workload), NAMESPACE, template["metadata"]["labels"], ports))
    for cluster in (o for o in objects if o["kind"] == "Cluster"):
        # CloudNativePG's instance pods: its labels plus spec.inheritedMetadata's.
        name = cluster["metadata"]["name"]
        labels = {"cnpg.io/cluster": name, **cluster["spec"]["inheritedMetadata"]["labels"]}
        found.append(Endpoint(f"cnpg:{name}", NAMESPACE, labels, (5432, 8000, 9187)))
    return found


def outside(namespace: str | None, **labels: str) -> Endpoint:
    return Endpoint(f"{namespace or 'internet'}", namespace, labels)


INTERNET = outside(None)
KUBE_DNS = outside("kube-system", **{"k8s-app": "kube-dns"})
COLLECTOR = outside("observability", **{"app.kubernetes.io/name": "opentelemetry-collector"})
PROMETHEUS = outside("monitoring", **{"app.kubernetes.io/name": "prometheus"})
CNPG_OPERATOR = outside("cnpg-system", **{"app.kubernetes.io/name": "cloudnative-pg"})
INGRESS_CONTROLLER = outside("ingress-nginx", **{"app.kubernetes.io/name": "ingress-nginx"})
OTHER_APP = outside("other-team", app="curious")


def peer_matches(peer: Obj, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        return endpoint.namespace is None  # cluster-private ranges are excluded in the tree
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": endpoint.namespace}
        if not matches(peer["namespaceSelector"], ns_labels):
            return False
    elif endpoint.namespace != NAMESPACE:
        return False
    return matches(peer.get("podSelector", {}), endpoint.labels)


def rule_allows(rule: Obj, peers_key: str, endpoint: Endpoint, port: int) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port for p in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(peer_matches(p, endpoint) for p in peers)


def allowed(policies: list[Obj], direction: str, pod: Endpoint, other: Endpoint, port: int) -> bool:
    if pod.namespace != NAMESPACE:
        return True  # another namespace's own policies are not ours to judge
    selecting = [
        p
        for p in policies
        if direction in p["spec"].get("policyTypes", ["Ingress"])
        and matches(p["spec"]["podSelector"], pod.labels)
    ]
    assert selecting, f"no {direction} policy selects {pod.name}"
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        rule_allows(rule, peers_key, other, port)
        for p in selecting
        for rule in p["spec"].get(key, [])
    )


def reachable(policies: list[Obj], src: Endpoint, dst: Endpoint, port: int) -> bool:
    return allowed(policies, "Egress", src, dst, port) and allowed(
        policies, "Ingress", dst, src, port
    )


def network(objects: list[Obj]) -> tuple[list[Obj], dict[str, Endpoint]]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    return policies, {p.name: p for p in pods(objects)}


def callers(
    policies: list[Obj], everyone: dict[str, Endpoint], dst: Endpoint, port: int
) -> set[str]:
    return {name for name, src in everyone.items() if reachable(policies, src, dst, port)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_selects_every_pod_both_ways(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    policies = [o for o in rendered[overlay] if o["kind"] == "NetworkPolicy"]
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert [p["metadata"]["name"] for p in deny] == ["default-deny-all"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_accepts_traffic_from_outside_the_namespace(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    policies, everyone = network(rendered[overlay])
    for pod in everyone.values():
        for port in pod.ports:
            public = pod.name == "gateway" and port == 8080
            for source in (INTERNET, INGRESS_CONTROLLER, OTHER_APP):
                assert allowed(policies, "Ingress", pod, source, port) is public, (
                    f"{source.name} -> {pod.name}:{port}"
                )
            # Two narrow exceptions, each to one port from one namespace:
            assert allowed(policies, "Ingress", pod, PROMETHEUS, port) is (
                public or (pod.name in SERVICES and port == 9464)
            ), f"prometheus -> {pod.name}:{port}"
            assert allowed(policies, "Ingress", pod, CNPG_OPERATOR, port) is (
                public or (pod.name.startswith("cnpg:") and port == 8000)
            ), f"cnpg operator -> {pod.name}:{port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_payments_and_usage_may_reach_the_wallet(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    policies, everyone = network(rendered[overlay])
    wallet = everyone["wallet"]
    for port in wallet.ports:
        assert callers(policies, everyone, wallet, port) <= {"gateway", "payments", "usage"}
    assert "gateway" in callers(policies, everyone, wallet, 50051)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_services_reach_postgresql_and_nats(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    policies, everyone = network(rendered[overlay])
    databases = [p for p in everyone.values() if p.labels.get("tokenforge.io/role") == "database"]
    brokers = [p for p in everyone.values() if p.labels.get("tokenforge.io/role") == "messaging"]
    assert len(databases) == 1 and len(brokers) == 1
    for db in databases:
        replicas = {db.name} if db.name.startswith("cnpg:") else set()  # streaming replication
        assert callers(policies, everyone, db, 5432) == DATABASE_CLIENTS | replicas
        for port in set(db.ports) - {5432}:
            assert callers(policies, everyone, db, port) <= replicas
    for nats in brokers:
        assert callers(policies, everyone, nats, 4222) == NATS_CLIENTS
        for port in set(nats.ports) - {4222}:
            assert callers(policies, everyone, nats, port) <= {nats.name}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_flows_the_system_needs_are_open(rendered: dict[str, list[Obj]], overlay: str) -> None:
    policies, everyone = network(rendered[overlay])
    gateway = everyone["gateway"]
    for name in ("routing", "usage"):
        assert callers(policies, everyone, everyone[name], 50051) == {"gateway"}
    # Usage reads the wallet's holds and ledger rows to reconcile (Reconcile).
    assert callers(policies, everyone, everyone["wallet"], 50051) == {"gateway", "usage"}
    # The wallet confirms each top-up with payments (GetTopUp) before crediting it.
    assert callers(policies, everyone, everyone["payments"], 50051) == {"gateway", "wallet"}
    for pod in everyone.values():
        assert reachable(policies, pod, KUBE_DNS, 53), f"{pod.name} -> DNS"
    for name in SERVICES:
        assert reachable(policies, everyone[name], COLLECTOR, 4317), f"{name} -> collector"
    assert reachable(policies, gateway, INTERNET, 443)  # upstream channels
    assert reachable(policies, everyone["payments"], INTERNET, 443)  # the payment provider
    for name in ("routing", "wallet", "usage"):
        assert not reachable(policies, everyone[name], INTERNET, 443), name
    if overlay == "dev":
        assert callers(policies, everyone, everyone["mock-upstream"], 9999) == {"gateway"}
    else:
        nats = everyone["nats"]
        assert reachable(policies, nats, nats, 6222)  # cluster routes between the 3 servers
        pg = everyone["cnpg:tokenforge-pg"]
        assert reachable(policies, pg, INTERNET, 443)  # the instance manager -> Kubernetes API
