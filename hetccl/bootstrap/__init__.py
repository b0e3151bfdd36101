"""Bootstrap: who am I (env), where is everyone (store, rendezvous), and ``hetccl run`` (launcher).

Submodules are imported lazily so ``python -m hetccl.bootstrap.launcher`` starts without loading
ZeroMQ in the launcher process.
"""
from __future__ import annotations

import importlib

__all__ = ["LaunchInfo", "detect", "StoreClient", "StoreServer", "StoreConnection",
           "connect_store", "client_handshake", "server_handshake", "authenticate_socket",
           "hmac_key", "run_main"]

_WHERE = {
    "LaunchInfo": "env", "detect": "env",
    "StoreClient": "store", "StoreServer": "store",
    "StoreConnection": "rendezvous", "connect_store": "rendezvous",
    "client_handshake": "auth", "server_handshake": "auth", "authenticate_socket": "auth",
    "hmac_key": "auth",
    "run_main": "launcher",
}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)
