"""Collective algorithms (one module per family), their registry, and the tuner that picks one per call."""
