"""Generated from protos/tokenforge/gateway/v1 by `make protos`."""
