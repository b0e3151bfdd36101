"""Fault injection: every scenario is one parametrised case of one harness (harness.py), whose ranks
run ranks.py; test_faults.py is the CI subset, bench/faults.py the full run."""
