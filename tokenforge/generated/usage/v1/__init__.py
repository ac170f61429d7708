"""Generated from protos/tokenforge/usage/v1 by `make protos`."""
