"""Generated from protos/tokenforge/common/v1 by `make protos`."""
