"""The research assistant: a multi-section research report written through the
gateway itself, on a run (budget shown before, progress per section, one aggregate
receipt after). `plan` and `render` are pure; `run` talks HTTP to the gateway."""
