"""The payments domain: plain Python, no I/O."""
