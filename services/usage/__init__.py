"""Usage: receipts, the after-story of every request."""
