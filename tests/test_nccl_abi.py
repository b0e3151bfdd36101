"""hetccl declares the parts of nccl.h it uses itself (the binding builds and loads without NCCL or
CUDA headers): the ncclDataType_t / ncclRedOp_t values (hetccl/bridges/nccl.py), the ncclConfig_t
fields it sets, NCCL_UNIQUE_ID_BYTES, NCCL_API_MAGIC and ncclInProgress (_native/ccl_api.pyx), and the
ABI test double repeats them (tests/fakeccl/fakeccl.c: result codes, the dtype and op tables, the
config it reads). This checks every one of them against the nccl.h shipped in the nvidia-nccl-cu12
wheel (nvidia/nccl/include), by compiling a tiny C program against it, as test_ucx_abi.py does for
UCX. nccl.h includes CUDA headers that a runtime-only install lacks: the program gets stand-ins
(cudaStream_t, cudaEvent_t and CUDART_VERSION), which is all nccl.h's C declarations use."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FAKECCL = os.path.join(HERE, "fakeccl")

TYPES = ["ncclInt8", "ncclUint8", "ncclInt32", "ncclUint32", "ncclInt64", "ncclUint64", "ncclFloat16",
         "ncclFloat32", "ncclFloat64", "ncclBfloat16", "ncclFloat8e4m3", "ncclFloat8e5m2"]
OPS = ["ncclSum", "ncclProd", "ncclMax", "ncclMin", "ncclAvg"]
RESULTS = ["ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
           "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress", "ncclTimeout"]
# the test double's core kind (fakecore.h) of each ncclDataType_t, and of each ncclRedOp_t
KIND = {"ncclInt8": "K_I8", "ncclUint8": "K_U8", "ncclInt32": "K_I32", "ncclUint32": "K_U32",
        "ncclInt64": "K_I64", "ncclUint64": "K_U64", "ncclFloat16": "K_F16", "ncclFloat32": "K_F32",
        "ncclFloat64": "K_F64", "ncclBfloat16": "K_BF16", "ncclFloat8e4m3": "K_E4M3",
        "ncclFloat8e5m2": "K_E5M2"}
OP_KIND = {"ncclSum": "O_SUM", "ncclProd": "O_PROD", "ncclMax": "O_MAX", "ncclMin": "O_MIN",
           "ncclAvg": "O_AVG"}


def _header() -> str:
    """nccl.h of the installed nvidia-nccl-cu12 wheel (a test extra: missing, the test skips, and
    CI's --only-hardware-skips fails the run)."""
    try:
        importlib.metadata.version("nvidia-nccl-cu12")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nvidia-nccl-cu12 is not installed (pip install -e '.[bridges]')")
    spec = importlib.util.find_spec("nvidia.nccl")
    for d in spec.submodule_search_locations or []:
        h = os.path.join(d, "include", "nccl.h")
        if os.path.exists(h):
            return h
    raise AssertionError("the nvidia-nccl-cu12 wheel ships no include/nccl.h: state the source and "
                         "version of every constant instead of this check")


def _compile_and_run(tmp_path, header, body, extra_includes=()) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed (gcc)"
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    (stubs / "cuda_runtime.h").write_text("typedef struct CUstream_st *cudaStream_t;\n"
                                          "typedef struct CUevent_st *cudaEvent_t;\n"
                                          "#define CUDART_VERSION 12000\n")
    for name in ("cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h"):
        (stubs / name).write_text("")
    src = tmp_path / "abi.c"
    src.write_text("\n".join(["#include <stdio.h>", "#include <stddef.h>", *extra_includes,
                              "#include <nccl.h>", body]))
    exe = tmp_path / "abi"
    r = subprocess.run([cc, "-w", f"-I{stubs}", f"-I{os.path.dirname(header)}", f"-I{FAKECCL}",
                        str(src), "-o", str(exe), "-lm", "-lpthread"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (ln.rsplit(" ", 1) for ln in out.splitlines())}


def _printer(exprs) -> str:
    lines = ["int main(void) {"]
    for e in exprs:
        lines.append(f'    printf("%s %lld\\n", "{e}", (long long)({e}));')
    return "\n".join(lines + ["    return 0;", "}"])


def test_binding_constants_match_the_wheels_nccl_h(tmp_path):
    from hetccl._native import ccl_api
    from hetccl.bridges import nccl
    header = _header()
    ours = {name: getattr(nccl, name) for name in TYPES + OPS}
    ours.update(ccl_api._abi())
    theirs = _compile_and_run(tmp_path, header, _printer(ours))
    wrong = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not wrong, f"hetccl disagrees with {header} (ours, nccl.h's): {wrong}"


def _fake_part(pattern: str) -> str:
    with open(os.path.join(FAKECCL, "fakeccl.c")) as f:
        text = f.read()
    m = re.search(pattern, text, re.S)
    assert m, f"tests/fakeccl/fakeccl.c no longer has {pattern!r}: update this test with it"
    return m.group(0)


def test_the_test_double_uses_the_wheels_nccl_h_values(tmp_path):
    """fakeccl.c's result codes, its ncclDataType_t -> kind and ncclRedOp_t -> op tables and the
    ncclConfig_t it reads, compiled beside the real nccl.h (the double's names get a prefix so both
    fit in one program)."""
    header = _header()
    results = _fake_part(r"enum \{ ncclSuccess,.*?\};")
    results = re.sub(r"\b(nccl\w+)", r"fake_\1", results)
    table = _fake_part(r"static const int dt_kind\[\] = \{[^}]*\};")
    config = _fake_part(r"typedef struct \{[^}]*\} config_v21400;")
    exprs = [f"fake_{r} == {r}" for r in RESULTS]
    exprs += [f"dt_kind[{t}] == {k}" for t, k in KIND.items()]
    exprs += ["sizeof(dt_kind) / sizeof(dt_kind[0]) == ncclNumTypes"]
    exprs += [f"{o} == {k}" for o, k in OP_KIND.items()]           # op_of(): the value itself
    exprs += [f"offsetof(config_v21400, {f}) == offsetof(ncclConfig_t, {f})"
              for f in ("size", "magic", "version", "blocking")]
    body = "\n".join([results, table, config, _printer(exprs)])
    got = _compile_and_run(tmp_path, header, body, ['#include "fakecore.h"'])
    wrong = [e for e, v in got.items() if v != 1]
    assert not wrong, f"tests/fakeccl/fakeccl.c disagrees with {header}: {wrong}"
    with open(os.path.join(FAKECCL, "fakeccl.c")) as f:
        assert "0xcafebeef" in f.read()          # the magic the double checks: NCCL_API_MAGIC (above)
