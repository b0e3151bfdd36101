"""One source for the integer codes, the wire header and the link kinds: the native core's
(_native/codes.pxd, _native/wire.pxd, _native/links.pyx), which the Python layer reads or mirrors.

dtypes.py and ops.py keep import-light copies (``import hetccl`` loads no native code); these tests
are what keeps them equal. The algorithm codes are read from the compiled module; every algorithm
the registry lists must also be one the native dispatch runs for its collective.
"""
from __future__ import annotations

import os
import re
import socket

import numpy as np
import pytest

from hetccl import dtypes, ops
from hetccl._native import codes, dispatch, failure, links
from hetccl._native.engine import Engine
from hetccl.collectives import algorithm, registry
from hetccl.errors import InvalidUsage, PeerLostError

NATIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hetccl", "_native")


def _native_names(prefix):
    return {k: v for k, v in vars(codes).items() if k.startswith(prefix) and isinstance(v, int)}


def test_dtype_codes_names_and_sizes_match_the_native_ones():
    native = _native_names("DT_")
    assert native.pop("DT_COUNT") == len(dtypes.NAMES) == len(codes.DTYPE_NAMES)
    mirror = {"FP8_E4M3": "FP8_E4M3", "FP8_E5M2": "FP8_E5M2"}
    for name, value in native.items():
        assert getattr(dtypes, mirror.get(name[3:], name[3:])) == value, name
    assert list(dtypes.NAMES) == list(codes.DTYPE_NAMES)
    assert list(dtypes.ITEMSIZE) == list(codes.DTYPE_SIZES)


def test_op_codes_match_the_native_ones():
    native = _native_names("OP_")
    assert native.pop("OP_COUNT") == len(ops.ReduceOp) == len(codes.OP_NAMES)
    assert {f"OP_{op.name}": int(op) for op in ops.ReduceOp} == native
    assert [op.name for op in ops.ReduceOp] == list(codes.OP_NAMES)


def test_algorithm_codes_are_read_from_the_native_module():
    native = _native_names("ALGO_")
    python = {k: v for k, v in vars(algorithm).items() if k.startswith("ALGO_")}
    composed = {k: v for k, v in python.items() if k not in native}   # composed in Python: negative
    assert {k: python[k] for k in native} == native
    assert all(v < 0 for v in composed.values()), composed
    assert len(set(native.values())) == len(native)


# the arguments of each dispatch entry on a 1-rank engine, by collective
def _call(coll, eng, code):
    x = np.arange(8, dtype=np.float32)
    out = np.empty_like(x)
    f32 = codes.DT_FLOAT32
    calls = {
        "allreduce": lambda: dispatch.allreduce(eng, x, out, f32, 0, code, 5.0),
        "allgather": lambda: dispatch.allgather(eng, x, out, f32, code, 5.0),
        "allgatherv": lambda: dispatch.allgatherv(eng, x, out, [8], f32, code, 5.0),
        "reduce_scatter": lambda: dispatch.reduce_scatter(eng, x, out, None, f32, 0, code, 5.0),
        "broadcast": lambda: dispatch.broadcast(eng, x, 0, f32, code, 5.0),
        "reduce": lambda: dispatch.reduce(eng, x, out, 0, f32, 0, code, 5.0),
        "gather": lambda: dispatch.gather(eng, x, out, None, 0, f32, code, 5.0),
        "scatter": lambda: dispatch.scatter(eng, x, out, None, 0, f32, code, 5.0),
        "alltoall": lambda: dispatch.alltoall(eng, x, out, None, None, f32, code, 5.0),
        "barrier": lambda: dispatch.barrier(eng, code, 5.0),
    }
    calls[coll]()
    return out


def test_every_registered_native_algorithm_runs_through_the_one_dispatch():
    eng = Engine(0, 1)
    try:
        rows = [a for a in registry.ALGORITHMS if a.code >= 0]
        assert {a.collective for a in rows} == {"allreduce", "allgather", "allgatherv", "reduce_scatter",
                                               "broadcast", "reduce", "gather", "scatter", "alltoall",
                                               "barrier"}
        for a in rows:
            out = _call(a.collective, eng, a.code)
            if a.collective not in ("broadcast", "barrier"):
                assert np.array_equal(out, np.arange(8, dtype=np.float32)), a
        known = {(a.collective, a.code) for a in rows}
        for coll in {a.collective for a in rows}:
            for code in _native_names("ALGO_").values():
                if (coll, code) not in known:       # a code that is not this collective's schedule
                    with pytest.raises(InvalidUsage, match="names no .* schedule"):
                        _call(coll, eng, code)
    finally:
        eng.close()


def test_the_wire_header_and_its_magic_are_defined_once():
    sources = {}
    for name in os.listdir(NATIVE):
        if name.endswith((".pyx", ".pxd", ".pxi", ".h")):
            with open(os.path.join(NATIVE, name)) as f:
                sources[name] = f.read()
    magic = [n for n, s in sources.items() if re.search(r"0x314C4348", s, re.I)]
    assert magic == ["wire.pxd"], magic
    defines = [n for n, s in sources.items() if re.search(r"^\s*HDR_BYTES\s*=", s, re.M)]
    assert defines == ["wire.pxd"], defines
    writers = [n for n, s in sources.items() if re.search(r"\(<uint32_t\*>h\)\[0\]\s*=", s)]
    assert writers == ["wire.pxd"], writers


def test_describe_header_reads_the_native_layout():
    import struct
    h = struct.pack("<IBBBBIIQI4x", 0x314C4348, codes.COLL_ALLREDUCE, codes.DT_FLOAT32, codes.OP_MAX, 3, 7,
                    0, 1000, 2)
    assert failure.describe_header(h) == "allreduce #7 of 1000 float32 with MAX"
    assert failure.describe_header(b"\0" * 32) == "garbage (not a hetccl header)"


def test_link_kinds_have_one_registry_and_attach_checks_its_arguments():
    assert sorted(links.KINDS) == ["c2c", "rdma", "shm", "tcp"]
    assert sorted(links.KINDS.values()) == list(range(1, len(links.KINDS) + 1))
    eng = Engine(0, 2)
    a, b = socket.socketpair()
    try:
        assert eng.link_kind(0) == "self" and eng.link_kind(1) == "none"
        with pytest.raises(ValueError, match="unknown link kind 'carrier-pigeon'"):
            eng.attach(1, "carrier-pigeon", a.fileno())
        with pytest.raises(ValueError, match="not another rank"):
            eng.attach(0, "tcp", a.fileno())
        with pytest.raises(ValueError):
            eng.attach(1, "shm", a.fileno(), None, 1000, True)      # not a power of two
        assert eng.link_kind(1) == "none"
        eng.attach(1, "tcp", a.fileno())
        assert eng.link_kind(1) == "tcp"
        with pytest.raises(InvalidUsage, match="linked already"):
            eng.attach(1, "tcp", a.fileno())
    finally:
        eng.close()
        a.close()
        b.close()


def test_an_unlinked_peer_is_lost_and_links_attach_before_the_first_call():
    eng = Engine(0, 2)
    try:
        with pytest.raises(PeerLostError):               # rank 1 was never attached
            dispatch.barrier(eng, codes.ALGO_DISSEMINATION, 5.0)
        with pytest.raises(InvalidUsage, match="before its first call"):
            eng.attach(1, "tcp", 0)
    finally:
        eng.close()
