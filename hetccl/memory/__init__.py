"""Communication memory: symmetric allocations that every local rank maps (``comm.alloc``)."""
from .symmetric import MIN_BYTES, SymmetricMemory

__all__ = ["MIN_BYTES", "SymmetricMemory"]
