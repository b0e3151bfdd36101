"""Topology: who is where (host identity), and which transport links each pair of ranks."""
