"""The wallet: accounts' buckets, the double-entry ledger, holds, credits and adjustments."""
