"""Vendor bridges: native collective libraries (MPI, the NCCL-API family, HCCL) loaded at run time
and used as whole-collective backends for islands of ranks. The contract is in base.py."""
