"""Multi-host tests on one machine: network namespaces as hosts (see cluster.py)."""
