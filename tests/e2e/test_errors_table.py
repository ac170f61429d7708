"""Every refusal an OpenAI client can meet: its status, type and code, and no money
left reserved or taken."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import System


def chat(model: str = "demo-chat", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_every_refusal_names_status_type_and_code_and_leaves_nothing_held(
    system: System,
) -> None:
    _, key = await system.new_account(credit=50_000, routed=0)
    async with system.http(key) as http:
        restricted = (
            await http.post(
                "/v1/keys",
                json={
                    "name": "demo-only",
                    "scopes": ["inference"],
                    "allowed_models": ["demo-embed"],
                },
            )
        ).json()["key"]
        reader = (
            await http.post("/v1/keys", json={"name": "reader", "scopes": ["wallet_read"]})
        ).json()["key"]
        before = (await http.get("/v1/wallet")).json()
        cases: list[tuple[str, dict[str, str], Any, int, str, str]] = [
            ("malformed json", {}, b"{", 400, "invalid_request_error", "invalid_request"),
            (
                "no messages",
                {},
                {"model": "demo-chat"},
                400,
                "invalid_request_error",
                "invalid_request",
            ),
            (
                "bad max_tokens",
                {},
                chat(max_tokens=0),
                400,
                "invalid_request_error",
                "invalid_request",
            ),
            (
                "unknown key",
                {"authorization": "Bearer tf_nope"},
                chat(),
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                "no key",
                {"authorization": ""},
                chat(),
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                "no inference scope",
                {"authorization": f"Bearer {reader}"},
                chat(),
                403,
                "permission_error",
                "scope_missing",
            ),
            (
                "model not allowed",
                {"authorization": f"Bearer {restricted}"},
                chat(),
                403,
                "permission_error",
                "model_not_allowed",
            ),
            (
                "unknown model",
                {},
                chat("no-such-model"),
                404,
                "invalid_request_error",
                "model_not_found",
            ),
            (
                "routed balance empty",
                {},
                chat("demo-chat@routed", max_tokens=100),
                402,
                "insufficient_balance",
                "insufficient_balance",
            ),
            ("upstream down", {}, chat("test-down"), 502, "api_error", "upstream_failed"),
        ]
        for name, headers, body, status, err_type, code in cases:
            kwargs: dict[str, Any] = {"headers": headers}
            if isinstance(body, bytes):
                kwargs["content"] = body
                kwargs["headers"] = {**headers, "content-type": "application/json"}
            else:
                kwargs["json"] = body
            answer = await http.post("/v1/chat/completions", **kwargs)
            assert answer.status_code == status, (name, answer.text)
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == (err_type, code), name
            assert error["message"], name
            assert "x-request-id" in answer.headers, name
        after = (await http.get("/v1/wallet")).json()
    assert after == before
    assert all(b["held"]["micros"] == 0 for b in after["balances"])


@pytest.mark.parametrize("path", ["/v1/nowhere", "/v1/usage/req_not_mine"])
async def test_unknown_paths_and_other_accounts_objects_are_404_openai_errors(
    system: System, path: str
) -> None:
    _, key = await system.new_account()
    async with system.http(key) as http:
        answer = await http.get(path)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] in ("not_found", "model_not_found")
