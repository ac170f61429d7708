"""Generated from protos/tokenforge/routing/v1 by `make protos`."""
