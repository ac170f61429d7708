"""Payments: top-up orders, their providers and state machine, and the outbox that
publishes their lifecycle on NATS. Never touches balances."""
