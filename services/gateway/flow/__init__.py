"""The gateway's request flow: one module per stage, in the order of a request.
(Replay, `Idempotency-Key`, keeps HTTP answers: transport/http/replay.py.)

admit     validate, resolve the route (routing), plan the worst case
reserve   set the worst case aside: a `Reservation` (reservation.py): the request's
          own wallet hold, a draw from a budget, or a slice of a run
call      the route's channels, retries before the first byte, route fallback
finish    the settlement table -> the receipt -> the reservation ended, durably
          queued (ends.py) or done now; `abandon` for every way without an answer
stream    a streamed chat completion passed through, finished at its end
complete  a request that is not streamed, as the stages in order
replay    `Idempotency-Key`: a repeat gets the first answer and request id
preview   the "before" list, nothing held, nothing called
"""
