"""Usage errors: hetccl refuses what it cannot use with InvalidUsage, and says what to do.

Everything here runs in-process on a single-rank communicator (``hetccl.init(0, 1)``): the checks
happen before any data moves, so one rank exercises them all. A usage error must not break the
communicator: the next correct call still works.
"""
from __future__ import annotations

import array
import secrets
import threading

import numpy as np
import pytest

import hetccl
from hetccl import InvalidUsage

_LAUNCH_VARS = ("HETCCL_RANK", "HETCCL_SIZE", "HETCCL_LOCAL_RANK", "HETCCL_LOCAL_SIZE",
                "HETCCL_STORE", "HETCCL_SECRET", "HETCCL_TRANSPORTS", "HETCCL_ALGO",
                "HETCCL_TIMEOUT", "HETCCL_DEBUG", "RANK", "WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HETCCL_JOB_ID", "u" + secrets.token_hex(4))
    return monkeypatch


@pytest.fixture
def comm(clean_env):
    c = hetccl.init(0, 1, timeout=10)
    yield c
    c.close()


def _still_works(comm):
    x = np.arange(5, dtype=np.float32)
    assert comm.allreduce(x) is x and np.array_equal(x, np.arange(5, dtype=np.float32))


def _store_threads():
    return [t for t in threading.enumerate() if t.name.startswith("hetccl-store") and t.is_alive()]


# ------------------------------------------------------------------------------------------------
# Buffers
# ------------------------------------------------------------------------------------------------
def test_read_only_output_is_refused(comm):
    x = np.ones(8, dtype=np.float32)
    x.flags.writeable = False
    with pytest.raises(InvalidUsage, match="read-only.*writable"):
        comm.allreduce(x)                                    # in place: x is the output
    out = np.ones(8, dtype=np.float32)
    out.flags.writeable = False
    with pytest.raises(InvalidUsage, match="read-only"):
        comm.allreduce(np.ones(8, dtype=np.float32), out=out)
    with pytest.raises(InvalidUsage, match="read-only"):
        comm.allgather(np.ones(8, dtype=np.float32), out)
    with pytest.raises(InvalidUsage, match="read-only"):
        comm.allreduce(bytes(8))                             # an immutable buffer, in place
    _still_works(comm)


def test_read_only_input_is_fine_out_of_place(comm):
    x = np.arange(6, dtype=np.int32)
    x.flags.writeable = False
    out = np.zeros(6, dtype=np.int32)
    assert comm.allreduce(x, out=out) is out and np.array_equal(out, x)
    g = comm.allgather(x)
    assert np.array_equal(g, x)
    assert np.array_equal(comm.allreduce(bytes(range(4)), out=bytearray(4)), bytearray(range(4)))


def test_non_contiguous_buffers_are_refused(comm):
    x = np.arange(20, dtype=np.float64)
    with pytest.raises(InvalidUsage, match="not C-contiguous.*ascontiguousarray"):
        comm.allreduce(x[::2], out=np.empty(10))
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        comm.allreduce(x[::2])                               # in place
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        comm.allreduce(np.ones(10), out=x[::2])
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        comm.allgather(x[::2])
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        comm.allreduce(np.ones((3, 4), order="F"))           # Fortran order
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        comm.allreduce(np.ones((4, 6))[:, 1:3])              # a column block
    assert np.array_equal(x, np.arange(20, dtype=np.float64))  # nothing was touched
    _still_works(comm)


def test_non_contiguous_memoryview_is_refused(comm):
    mv = memoryview(bytearray(16))[::2]
    with pytest.raises(InvalidUsage, match="contiguous"):
        comm.allreduce(mv)
    with pytest.raises(InvalidUsage, match="contiguous"):
        comm.allreduce(np.zeros(8, np.uint8), out=mv)
    _still_works(comm)


def test_op_invalid_for_dtype(comm):
    with pytest.raises(InvalidUsage, match="BXOR is a bitwise op.*float32.*integer"):
        comm.allreduce(np.ones(4, dtype=np.float32), hetccl.BXOR)
    with pytest.raises(InvalidUsage, match="bitwise"):
        comm.allreduce(np.ones(4, dtype=np.float64), hetccl.BAND)
    with pytest.raises(InvalidUsage, match="bitwise"):
        comm.allreduce(array.array("d", [1.0]), hetccl.BOR)
    import ml_dtypes
    with pytest.raises(InvalidUsage, match="bitwise"):
        comm.allreduce(np.ones(4, dtype=ml_dtypes.bfloat16), hetccl.BOR)
    for op in (hetccl.SUM, hetccl.PROD, hetccl.AVG):
        with pytest.raises(InvalidUsage, match="bool.*BOR"):
            comm.allreduce(np.ones(4, dtype=np.bool_), op)
    _still_works(comm)


def test_op_names_and_bad_ops(comm):
    x = np.array([3, 1, 2], dtype=np.int64)
    comm.allreduce(x, "max")                                 # names are accepted
    comm.allreduce(x, 3)                                     # and integer values
    assert np.array_equal(x, [3, 1, 2])
    with pytest.raises(InvalidUsage, match="unknown reduction op 'median'"):
        comm.allreduce(x, "median")
    with pytest.raises(InvalidUsage, match="unknown reduction op"):
        comm.allreduce(x, 42)
    with pytest.raises(InvalidUsage, match="unknown reduction op"):
        comm.allreduce(x, None)
    _still_works(comm)


def test_output_of_the_wrong_size(comm):
    x = np.ones(10, dtype=np.float32)
    with pytest.raises(InvalidUsage, match="output has 36 bytes but the input has 40"):
        comm.allreduce(x, out=np.empty(9, dtype=np.float32))
    with pytest.raises(InvalidUsage, match="output has"):
        comm.allreduce(x, out=np.empty(11, dtype=np.float32))
    with pytest.raises(InvalidUsage, match="needs size x input"):
        comm.allgather(x, np.empty(11, dtype=np.float32))
    with pytest.raises(InvalidUsage, match="needs size x input"):
        comm.allgather(x, np.empty(0, dtype=np.float32))
    _still_works(comm)


def test_output_of_another_dtype(comm):
    with pytest.raises(InvalidUsage, match="dtype"):
        comm.allreduce(np.ones(4, dtype=np.float32), out=np.empty(4, dtype=np.int32))
    with pytest.raises(InvalidUsage, match="dtype"):
        comm.allgather(np.ones(4, dtype=np.float64), np.empty(8, dtype=np.int32))


def test_partially_overlapping_buffers(comm):
    x = np.arange(10, dtype=np.float32)
    with pytest.raises(InvalidUsage, match="partially overlap"):
        comm.allreduce(x[0:6], out=x[3:9])
    _still_works(comm)


@pytest.mark.parametrize("make,phrase", [
    (lambda: np.ones(3, dtype=np.complex64), "complex64 is not supported; use one of"),
    (lambda: np.array([1, "a", None], dtype=object), "object is not supported|dtype object"),
    (lambda: np.zeros(3, dtype="datetime64[s]"), "not supported"),
    (lambda: np.zeros(3, dtype=[("a", "i4"), ("b", "f4")]), "not supported"),
    (lambda: np.ones(3, dtype=">f4"), "big-endian; convert"),
    (lambda: array.array("u", "abc"), "not a supported element type"),
    (lambda: [1.0, 2.0], "not a buffer; pass a numpy array"),
    (lambda: "text", "not a buffer"),
], ids=["complex64", "object", "datetime64", "structured", "big-endian", "array-u", "list", "str"])
def test_unsupported_dtypes_and_objects(comm, make, phrase):
    buf = make()
    with pytest.raises(InvalidUsage, match=phrase):
        comm.allreduce(buf)
    with pytest.raises(InvalidUsage, match=phrase):
        comm.allgather(buf, out=buf)
    _still_works(comm)


def test_allgather_of_a_non_numpy_buffer_needs_out(comm):
    with pytest.raises(InvalidUsage, match="needs out="):
        comm.allgather(bytearray(4))
    o = bytearray(4)
    assert comm.allgather(b"abcd", o) is o and o == b"abcd"


def test_bad_algorithm_names(comm):
    x = np.ones(4, dtype=np.float32)
    with pytest.raises(InvalidUsage, match="allreduce has no algorithm 'bogus'; choose from ring, "
                                           "recursive_doubling"):
        comm.allreduce(x, algorithm="bogus")
    with pytest.raises(InvalidUsage, match="allgather has no algorithm 'tree'"):
        comm.allgather(x, algorithm="tree")
    for name in ("ring", "rd", "recursive_doubling"):       # all accepted, aliases included
        comm.allreduce(x, algorithm=name)
        comm.allgather(x, algorithm=name)
    assert comm.last_algorithm == "recursive_doubling"
    _still_works(comm)


def test_bad_timeouts(comm, clean_env):
    with pytest.raises(InvalidUsage, match="positive"):
        comm.allreduce(np.ones(2), timeout=0)
    with pytest.raises(InvalidUsage, match="positive"):
        comm.allgather(np.ones(2), timeout=-1)
    clean_env.setenv("HETCCL_TIMEOUT", "soon")
    with pytest.raises(InvalidUsage, match="HETCCL_TIMEOUT='soon' is not a number"):
        hetccl.init(0, 1)
    _still_works(comm)


def test_size_one_collectives(comm):
    assert (comm.rank, comm.size) == (0, 1)
    assert comm.transport(0) == "self"
    assert "1 rank" in comm.describe()
    assert "->" in comm.explain("allreduce", 1024)
    x = np.arange(7, dtype=np.int16)
    out = np.zeros(7, dtype=np.int16)
    for op in (hetccl.SUM, hetccl.PROD, hetccl.MIN, hetccl.MAX, hetccl.AVG, hetccl.BXOR):
        assert comm.allreduce(x, op, out=out) is out and np.array_equal(out, x)
    g = comm.allgather(x)
    assert np.array_equal(g, x) and g is not x
    comm.barrier()


def test_closed_and_aborted_communicators(clean_env):
    c = hetccl.init(0, 1, timeout=10)
    c.abort()
    with pytest.raises(hetccl.CommAborted, match="hetccl.init"):
        c.allreduce(np.ones(3))
    c.close()
    c.close()                                                # idempotent
    c = hetccl.init(0, 1, timeout=10)
    c.close()
    with pytest.raises(hetccl.CommAborted):
        c.allgather(np.ones(3))
    with hetccl.init(0, 1, timeout=10) as c:                 # context manager
        c.allreduce(np.ones(3))
    with pytest.raises(hetccl.CommAborted):
        c.allreduce(np.ones(3))


# ------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,phrase", [
    ("allreduce", r"entry 'allreduce' is not 'collective:algorithm'"),
    ("allreduce=ring", r"is not 'collective:algorithm'"),
    ("allreduce:bogus", r"allreduce has no algorithm 'bogus'; choose from ring, recursive_doubling"),
    ("allreduce:ring;allgather:tree", r"allgather has no algorithm 'tree'"),
    ("allscatter:ring", r"'allscatter:ring' is not 'collective:algorithm'"),
], ids=["no-colon", "equals", "unknown-algo", "second-entry", "unknown-collective"])
def test_hetccl_algo_parse_errors(clean_env, spec, phrase):
    clean_env.setenv("HETCCL_ALGO", spec)
    before = len(_store_threads())
    with pytest.raises(InvalidUsage, match=phrase):
        hetccl.init(0, 1, timeout=10)
    assert len(_store_threads()) == before, "a failed init left its store server running"


def test_hetccl_algo_accepts_aliases_and_spaces(clean_env):
    clean_env.setenv("HETCCL_ALGO", " allreduce : rd ;allgather:ring; ")
    with hetccl.init(0, 1, timeout=10) as c:
        c.allreduce(np.ones(3))
        assert c.last_algorithm == "recursive_doubling"
        c.allgather(np.ones(3))
        assert c.last_algorithm == "ring"
        c.allgather(np.ones(3), algorithm="rd")              # the call's own choice wins
        assert c.last_algorithm == "recursive_doubling"


@pytest.mark.parametrize("spec,phrase", [
    ("infiniband", r"unknown transport\(s\) infiniband; known: c2c, shm, rdma, tcp"),
    ("shm,carrier-pigeon", r"unknown transport\(s\) carrier-pigeon"),
    ("^nvlink", r"unknown transport\(s\) nvlink"),
])
def test_hetccl_transports_unknown_name(clean_env, spec, phrase):
    clean_env.setenv("HETCCL_TRANSPORTS", spec)
    before = len(_store_threads())
    with pytest.raises(InvalidUsage, match=phrase):
        hetccl.init(0, 1, timeout=10)
    with pytest.raises(InvalidUsage, match=phrase):
        clean_env.delenv("HETCCL_TRANSPORTS")
        hetccl.init(0, 1, timeout=10, transports=spec)       # the argument form
    assert len(_store_threads()) == before, "a failed init left its store server running"


def test_init_argument_errors(clean_env):
    with pytest.raises(InvalidUsage, match="pass both rank= and size="):
        hetccl.init(0)
    with pytest.raises(InvalidUsage, match="rank 3 is not in 0..1"):
        hetccl.init(3, 2)
    clean_env.setenv("HETCCL_RANK", "0")
    clean_env.setenv("HETCCL_SIZE", "two")
    with pytest.raises(InvalidUsage, match="HETCCL_SIZE='two' is not an integer"):
        hetccl.init()


def test_introspection_argument_errors(comm):
    with pytest.raises(InvalidUsage, match="0..0"):
        comm.transport(3)                                    # not IndexError
    with pytest.raises(InvalidUsage, match="0..0"):
        comm.transport(-1)                                   # not python's wrap-around
    with pytest.raises(InvalidUsage, match="allscatter"):
        comm.explain("allscatter", 10)                       # not "min() arg is an empty sequence"
    with pytest.raises(InvalidUsage, match="timeout"):
        comm.allreduce(np.ones(3), timeout="soon")           # not float()'s message
