"""A small local fake of the Stripe API (Checkout Sessions only), and Stripe-style
webhook signing, for tests: no network to Stripe.

The `stripe` library is pointed at it through its `api` base address. It answers
`POST /v1/checkout/sessions` (honouring `Idempotency-Key`),
`POST /v1/checkout/sessions/{id}/expire` and `GET /v1/checkout/sessions/{id}`; tests
then mark a session paid (or change what it reports) and build the webhook Stripe
would send, signed with Stripe's scheme:
`Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


def sign(body: bytes, secret: str, at: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send for `body`."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _nested(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`a[b][0][c]=v`) back into dicts (lists stay dicts by index)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


class FakeStripe:
    def __init__(self) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.by_idempotency_key: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                fake.requests.append(("POST", self.path))
                length = int(self.headers.get("Content-Length", "0"))
                form = _nested(parse_qsl(self.rfile.read(length).decode()))
                prefix, suffix = "/v1/checkout/sessions/", "/expire"
                if self.path.startswith(prefix) and self.path.endswith(suffix):
                    session_id = self.path.removeprefix(prefix).removesuffix(suffix)
                    found = fake.expire(session_id)
                    if found is None:
                        self._answer(404, {"error": {"type": "invalid_request_error"}})
                    else:
                        self._answer(200, found)
                    return
                if self.path != "/v1/checkout/sessions":
                    self._answer(404, {"error": {"type": "invalid_request_error"}})
                    return
                key = self.headers.get("Idempotency-Key", "")
                self._answer(200, fake._create(form, key))

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(("GET", self.path))
                prefix = "/v1/checkout/sessions/"
                session_id = self.path.split("?")[0].removeprefix(prefix)
                with fake._lock:
                    session = fake.sessions.get(session_id)
                if not self.path.startswith(prefix) or session is None:
                    self._answer(
                        404,
                        {"error": {"type": "invalid_request_error", "message": "No such session"}},
                    )
                    return
                self._answer(200, session)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeStripe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _create(self, form: dict[str, Any], key: str) -> dict[str, Any]:
        with self._lock:
            if key and key in self.by_idempotency_key:
                return self.sessions[self.by_idempotency_key[key]]
            item = form["line_items"]["0"]
            session_id = f"cs_test_{uuid.uuid4().hex}"
            session = {
                "id": session_id,
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/c/pay/{session_id}",
                "mode": form.get("mode", "payment"),
                "amount_total": int(item["price_data"]["unit_amount"]) * int(item["quantity"]),
                "currency": item["price_data"]["currency"],
                "metadata": form.get("metadata", {}),
                "client_reference_id": form.get("client_reference_id"),
                "success_url": form.get("success_url"),
                "status": "open",
                "payment_status": "unpaid",
                "payment_intent": None,
            }
            self.sessions[session_id] = session
            if key:
                self.by_idempotency_key[key] = session_id
            return session

    def expire(self, session_id: str) -> dict[str, Any] | None:
        """`POST /v1/checkout/sessions/{id}/expire`: an open session closes for good."""
        with self._lock:
            session = self.sessions.get(session_id)
            if session is not None and session["status"] == "open":
                session["status"] = "expired"
            return session

    def pay(
        self,
        session_id: str,
        *,
        amount_total: int | None = None,
        currency: str | None = None,
        payment_intent: str | None = None,
    ) -> dict[str, Any]:
        """The customer paid: what Stripe reports about the session from now on."""
        with self._lock:
            session = self.sessions[session_id]
            session.update(
                status="complete",
                payment_status="paid",
                payment_intent=payment_intent or f"pi_test_{uuid.uuid4().hex[:16]}",
            )
            if amount_total is not None:
                session["amount_total"] = amount_total
            if currency is not None:
                session["currency"] = currency
            return dict(session)

    def event(
        self,
        session_id: str,
        event_type: str = "checkout.session.completed",
        *,
        event_id: str | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> bytes:
        """The webhook body Stripe would send (its object: the session as it is now)."""
        with self._lock:
            obj = snapshot if snapshot is not None else dict(self.sessions[session_id])
        return json.dumps(
            {
                "id": event_id or f"evt_test_{uuid.uuid4().hex}",
                "object": "event",
                "type": event_type,
                "created": int(time.time()),
                "livemode": False,
                "data": {"object": obj},
            }
        ).encode()
