"""The rendered overlays close the doors of issue 17: prod runs in production mode with
no test money, NATS takes only its users (the same permissions the code gives them in
tokenforge/runtime/nats.py) over TLS, and each service that uses NATS connects as its
own user; the settings a prod pod ends up with pass the production check."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from k8s_tree import OVERLAYS, tool

from tokenforge.config import Settings, admin_token_sha256
from tokenforge.prod_mode import NATS_USERS
from tokenforge.runtime.nats import NATS_PERMISSIONS

Obj = dict[str, Any]
SERVICES = ("routing", "wallet", "payments", "usage", "gateway")


def config_map(objects: list[Obj], prefix: str) -> dict[str, str]:
    return next(o["data"] for o in objects if o["metadata"]["name"].startswith(prefix))


def container(objects: list[Obj], name: str) -> Obj:
    workload = next(
        o
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == name
    )
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def users_of(conf: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...], str]]:
    """user -> (publish allow, subscribe allow, password) as nats.conf says."""
    found = {}
    for block in re.finditer(
        r'user: "(?P<user>[^"]+)"\s+password: (?P<password>\S+)\s+permissions: \{\s+'
        r"publish: \{ allow: (?P<pub>\[.*?\]) \}\s+subscribe: \{ allow: (?P<sub>\[.*?\]) \}",
        conf,
        re.S,
    ):
        found[block["user"]] = (
            tuple(json.loads(block["pub"])),
            tuple(json.loads(block["sub"])),
            block["password"],
        )
    return found


def pod_environment(
    objects: list[Obj], service: str, secret_values: dict[str, str]
) -> dict[str, str]:
    """The environment a service's container gets: the settings ConfigMap, then its env
    with `$(VAR)` expanded as the kubelet does; secrets read from `secret_values`
    ("<secret>/<key>")."""
    env = dict(config_map(objects, "tokenforge-settings"))
    for item in container(objects, service).get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patched:
        for name in [n for n in __import__("os").environ if n.startswith("TOKENFORGE_")]:
            patched.delenv(name)
        for name, value in env.items():
            patched.setenv(name, value)
        return Settings.from_env()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_takes_only_its_users_with_the_permissions_the_code_gives_them(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    conf = config_map(rendered[overlay], "nats-config")["nats.conf"]
    users = users_of(conf)

    assert set(users) == set(NATS_PERMISSIONS)
    for user, rights in NATS_PERMISSIONS.items():
        publish, subscribe, password = users[user]
        assert (publish, subscribe) == (rights.publish, rights.subscribe), user
        assert password == f"${user.upper()}_PASSWORD"
    assert "tokenforge.payments.v1.topup.>" in users["payments"][0]
    assert not any(s.startswith("tokenforge.payments.v1.topup") for s in users["wallet"][0])
    assert "no_auth_user" not in conf
    nats = container(rendered[overlay], "nats")
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in nats["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    for user in NATS_PERMISSIONS:
        assert from_secret[f"{user.upper()}_PASSWORD"] == {
            "name": "tokenforge-nats",
            "key": f"{user}-password",
        }


def test_the_dev_nats_config_is_one_nats_server_accepts(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    conf = tmp_path / "nats.conf"
    conf.write_text(config_map(rendered["dev"], "nats-config")["nats.conf"])
    # Passwords as docs/DEPLOY.md makes them (`openssl rand -hex 32`). NATS reads a
    # `$VAR` as a config value: a password like `64k`, `1234` or `true` would be a
    # number or a boolean and refused (token_urlsafe made one in about 2% of runs).
    env = {f"{u.upper()}_PASSWORD": secrets.token_hex(32) for u in NATS_PERMISSIONS}
    checked = subprocess.run(
        [tool("nats-server"), "-t", "-c", str(conf)],
        env={**env, "POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prod_nats_speaks_tls_to_clients_and_between_servers(
    rendered: dict[str, list[Obj]],
) -> None:
    conf = config_map(rendered["prod"], "nats-config")["nats.conf"]
    client_tls = re.search(r"^tls \{(.*?)^\}", conf, re.S | re.M)
    cluster_tls = re.search(r"^cluster \{.*?  tls \{(.*?)  \}", conf, re.S | re.M)
    assert client_tls and cluster_tls
    for block in (client_tls[1], cluster_tls[1]):
        assert "cert_file: /etc/nats-tls/tls.crt" in block
        assert "key_file: /etc/nats-tls/tls.key" in block
    nats = next(o for o in rendered["prod"] if o["kind"] == "StatefulSet")
    volumes = {v["name"]: v for v in nats["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "nats-tls"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_on_nats_connects_as_its_own_user_and_no_other_service_does(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    for service in SERVICES:
        env = {e["name"]: e for e in container(objects, service).get("env", [])}
        if service in NATS_USERS:
            assert env["TOKENFORGE_NATS_URL"]["value"] == (
                f"$(NATS_SCHEME)://{service}:$(NATS_PASSWORD)@$(NATS_ADDRESS)"
            )
            assert env["NATS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
                "name": "tokenforge-nats",
                "key": f"{service}-password",
            }
        else:
            assert "TOKENFORGE_NATS_URL" not in env and "NATS_PASSWORD" not in env, service
    settings = config_map(objects, "tokenforge-settings")
    assert "TOKENFORGE_NATS_URL" not in settings
    assert settings["NATS_SCHEME"] == ("tls" if overlay == "prod" else "nats")


def test_prod_is_in_production_mode_without_test_money_and_dev_says_it_has_test_money(
    rendered: dict[str, list[Obj]],
) -> None:
    prod = config_map(rendered["prod"], "tokenforge-settings")
    dev = config_map(rendered["dev"], "tokenforge-settings")

    assert prod["TOKENFORGE_ENV"] == "prod"
    assert "TOKENFORGE_SANDBOX_PROVIDER" not in prod
    assert dev["TOKENFORGE_SANDBOX_PROVIDER"] == "on"
    assert "TOKENFORGE_ENV" not in dev


@pytest.mark.parametrize("service", SERVICES)
def test_a_prod_pod_with_strong_secrets_passes_the_production_check(
    rendered: dict[str, list[Obj]], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    strong = {
        f"{secret}/{key}": secrets.token_urlsafe(32)
        for secret, keys in {
            "tokenforge-tokens": ("internal-token",),
            **{f"tokenforge-pg-{name}": ("uri",) for name in SERVICES},
            "tokenforge-nats": tuple(f"{u}-password" for u in NATS_PERMISSIONS),
        }.items()
        for key in keys
    }
    strong["tokenforge-tokens/admin-token-sha256"] = admin_token_sha256(secrets.token_urlsafe(32))
    env = pod_environment(rendered["prod"], service, strong)
    settings = settings_from(env, monkeypatch)

    assert settings.env == "prod"
    assert settings.unsafe_for_prod(service) == []
    if service in NATS_USERS:
        assert settings.nats_url.startswith(f"tls://{service}:")
        ca_mounts = [
            m["mountPath"]
            for m in container(rendered["prod"], service)["volumeMounts"]
            if m["name"] == "nats-ca"
        ]
        assert settings.nats_ca_file == f"{ca_mounts[0]}/ca.crt"


@pytest.mark.parametrize("service", NATS_USERS)
def test_the_dev_overlay_would_be_refused_in_production(
    rendered: dict[str, list[Obj]], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    placeholders = {
        "tokenforge-tokens/internal-token": "dev-only-internal-token",
        "tokenforge-tokens/admin-token-sha256": admin_token_sha256("dev-only-admin-token"),
        **{
            f"tokenforge-pg-{name}/uri": f"postgresql://tokenforge_{name}@postgres/tokenforge"
            for name in SERVICES
        },
        **{f"tokenforge-nats/{u}-password": f"dev-only-nats-{u}" for u in NATS_PERMISSIONS},
    }
    env = pod_environment(rendered["dev"], service, placeholders)
    reasons = settings_from({**env, "TOKENFORGE_ENV": "prod"}, monkeypatch).unsafe_for_prod(service)

    text = " ".join(reasons)
    assert "sandbox payments provider is on" in text
    assert "TOKENFORGE_ADMIN_TOKEN_SHA256 is the digest of a development token" in text
    assert "not tls://" in text
