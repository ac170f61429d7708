"""The bundled mock OpenAI-compatible upstream: deterministic answers, knobs for latency,
errors and cut streams, and a record of the requests it received.

`tokens.py` holds the token-counting rules, `knobs.py` the knobs, `replies.py` the wire
objects, `app.py` the ASGI app and `server.py` the ways to run it.
"""
