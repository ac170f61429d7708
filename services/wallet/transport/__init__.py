"""The wallet's transports: the gRPC servicer and the NATS top-up consumer."""
