"""Shared test stand-ins (tiny models, tiny datasets) that any test may import."""
