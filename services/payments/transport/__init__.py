"""Payments transport: the gRPC servicer and the outbox relay to NATS JetStream."""
