"""hetccl's test suite (a package so that spawned rank processes can import test functions)."""
