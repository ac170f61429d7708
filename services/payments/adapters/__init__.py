"""Talking to payment providers: their APIs and their webhook signatures."""
