"""Routing: the model catalog, channels, routes, and access (projects and API keys)."""
