"""What every service repeats: gRPC server and clients, database, NATS, telemetry, logs."""
