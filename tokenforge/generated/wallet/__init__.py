"""Generated from protos/tokenforge/wallet/v1 by `make protos`."""
