"""hetccl declares the UCP structs it uses itself (ucx.pxd), so that it builds without UCX; this
checks those declarations against UCX's real headers (shipped in the libucx-cu12 wheel, or set
HETCCL_UCX_INCLUDE to a system UCX's include directory) by compiling a tiny C program."""
import os
import shutil
import subprocess

import pytest


def _include_dir():
    env = os.environ.get("HETCCL_UCX_INCLUDE")
    if env:
        return env
    try:
        import libucx
    except ImportError:
        return None
    d = os.path.join(os.path.dirname(libucx.__file__), "include")
    return d if os.path.exists(os.path.join(d, "ucp", "api", "ucp.h")) else None


def test_declared_structs_match_ucx_headers(tmp_path):
    from hetccl._native import ucx
    inc = _include_dir()
    cc = shutil.which("cc") or shutil.which("gcc")
    if inc is None or cc is None:
        pytest.skip("UCX headers or a C compiler not available (set HETCCL_UCX_INCLUDE)")
    ours = ucx._layout()
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <ucp/api/ucp.h>", "int main(void) {"]
    for key in ours:
        if key.startswith("sizeof("):
            expr = key
        else:
            struct, field = key.split(".")
            expr = f"offsetof({struct}, {field})"
        lines.append(f'    printf("%s %zu\\n", "{key}", (size_t)({expr}));')
    lines += ["    return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "abi"
    subprocess.run([cc, f"-I{inc}", str(src), "-o", str(exe)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    theirs = {k: int(v) for k, v in (ln.rsplit(" ", 1) for ln in out.splitlines())}
    wrong = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert not wrong, f"ucx.pxd disagrees with UCX's headers (ours, theirs): {wrong}"
