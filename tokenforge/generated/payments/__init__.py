"""Generated from protos/tokenforge/payments/v1 by `make protos`."""
