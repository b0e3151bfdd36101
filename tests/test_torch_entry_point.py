"""The ``torch.backends`` entry point is a good guest (hetccl/torch/autoload.py, launch.py).

* ``import torch`` with hetccl installed but its compiled core missing (a source checkout that
  shadows the install, a broken build) or its registration failing still works: one warning that
  names the cause and the fix, and ``init_process_group("hetccl")`` raises that fix.
* ``import torch`` loads only the registration (no communicator, numpy dtypes, zmq).
* A gloo program behaves exactly as without hetccl (TORCH_DEVICE_BACKEND_AUTOLOAD=0), including
  torch's own env:// error under a non-torch launcher; the launcher-aware env:// applies to hetccl
  groups only.

"Installed" here is a ``hetccl`` dist-info carrying the entry point, first on the path, so the
tests do not depend on how the hetccl under test was installed (importlib.metadata keeps the
first distribution of a name). Each program imports torch in a fresh interpreter (2-3 s each).
"""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from tests.launcher import IMPORT_ROOT, REPO_ROOT, free_port, run_command, start_command, stop_command
from tests.test_lazy_imports import unbuilt_copy

pytest.importorskip("torch")

ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TORCH_DEVICE_BACKEND_AUTOLOAD": "1"}
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV[_var] = None
WARNING = "RuntimeWarning: hetccl:"


def _entry_point() -> str:
    """The ``torch.backends`` entry point pyproject.toml declares ("module:function")."""
    import tomllib
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["entry-points"]["torch.backends"]["hetccl"]


def _install_entry_point(where) -> str:
    """A hetccl dist-info with the entry point of pyproject.toml in ``where``, and the entry point's
    module when it lies outside the package (as an install has it); returns ``where``."""
    info = os.path.join(str(where), "hetccl-0.1.0.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: hetccl\nVersion: 0.1.0\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[torch.backends]\nhetccl = {_entry_point()}\n")
    module = _entry_point().split(":")[0]
    if "." not in module:
        shutil.copy(os.path.join(REPO_ROOT, module + ".py"), str(where))
    return str(where)


def _path(*dirs) -> str:
    return os.pathsep.join([*dirs, os.environ.get("PYTHONPATH", "")])


BROKEN_PROGRAM = """
import sys
import torch
print("torch works:", float(torch.ones(3).sum()))
import torch.distributed as dist
print("registered:", "hetccl" in dist.Backend.backend_list)
try:
    dist.init_process_group("hetccl", init_method="tcp://127.0.0.1:%d", rank=0, world_size=1)
except ImportError as e:
    print("init_process_group:", e)
"""


def _run_broken(root):
    """BROKEN_PROGRAM with the hetccl of ``root``: torch must work and hetccl register (the name),
    with exactly one warning; returns (the warning and what follows, the program's output)."""
    p = run_command([sys.executable, "-c", BROKEN_PROGRAM % free_port()], timeout=120,
                    env={**ENV, "PYTHONPATH": _path(root)}, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "torch works: 3.0" in p.stdout and "registered: True" in p.stdout, p.stdout
    assert p.stderr.count(WARNING) == 1, p.stderr
    return p.stderr[p.stderr.index(WARNING):], p


def test_import_torch_with_the_core_unimportable_warns_once(tmp_path):
    warning, p = _run_broken(_install_entry_point(unbuilt_copy(tmp_path)))
    assert "no compiled core" in warning and "build_ext --inplace" in warning, warning
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in warning, warning
    assert "init_process_group: No module named" in p.stdout and "build_ext" in p.stdout, p.stdout


def test_import_torch_when_registration_fails_warns_once_even_with_warnings_as_errors(tmp_path):
    root = _install_entry_point(unbuilt_copy(tmp_path))
    with open(os.path.join(root, "hetccl", "torch", "launch.py"), "w") as f:
        f.write("raise ImportError('simulated: a broken hetccl install')\n")
    code = "import torch, torch.distributed as dist; print('registered:', 'hetccl' in dist.Backend.backend_list)"
    for flags, marker in (([], WARNING), (["-W", "error"], "hetccl: the torch backend")):
        p = run_command([sys.executable, *flags, "-c", code], timeout=120,
                        env={**ENV, "PYTHONPATH": _path(root)}, cwd=root)
        assert p.returncode == 0, (flags, p.stderr[-3000:])
        assert "registered: False" in p.stdout, p.stdout
        assert p.stderr.count(marker) == 1 and "simulated: a broken hetccl install" in p.stderr, \
            (flags, p.stderr)
        assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in p.stderr, p.stderr


@pytest.mark.parametrize("breakage", ["syntax", "import"])
def test_import_torch_with_a_hetccl_that_cannot_import_warns_once_and_init_names_the_fix(tmp_path, breakage):
    """A hetccl package that fails to import at all (a file broken while editing an editable
    checkout, a half-updated one): torch imports, one warning names the problem and the fix, and
    init_process_group("hetccl") raises an ImportError saying the same."""
    root = _install_entry_point(unbuilt_copy(tmp_path))
    with open(os.path.join(root, "hetccl", "errors.py"), "a") as f:
        f.write("\ndef broken(:\n" if breakage == "syntax" else "\nraise ImportError('simulated: a half-updated checkout')\n")
    warning, p = _run_broken(root)
    cause = "SyntaxError" if breakage == "syntax" else "simulated: a half-updated checkout"
    assert "hetccl cannot be imported from " + os.path.join(root, "hetccl") in warning and cause in warning, warning
    assert "pip install -e ." in warning and "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in warning, warning
    assert "init_process_group: the torch backend 'hetccl' is unusable: hetccl cannot be imported" in p.stdout
    assert cause in p.stdout.split("init_process_group:")[1], p.stdout


GLOO_PROGRAM = """
import os, sys
from datetime import timedelta
import torch
import torch.distributed as dist

rank, size, port = (int(a) for a in sys.argv[1:4])
print("registered" if "hetccl" in dist.Backend.backend_list else "not registered", file=sys.stderr)
# env:// under a non-torch launcher (Slurm's variables, no RANK/WORLD_SIZE): torch's own answer
os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(size), SLURM_LOCALID=str(rank))
try:
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
except Exception as e:
    print("env:// ->", type(e).__name__, e)
for var in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
    del os.environ[var]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                        timeout=timedelta(seconds=60))
print("group", dist.get_backend(), dist.get_rank(), dist.get_world_size())
t = torch.arange(4, dtype=torch.float32) * (rank + 1)
dist.all_reduce(t)
print("all_reduce", t.tolist())
out = [torch.zeros(2, dtype=torch.int64) for _ in range(size)]
dist.all_gather(out, torch.tensor([rank, 10 * rank]))
print("all_gather", [o.tolist() for o in out])
b = torch.tensor([7.0 if rank == 0 else 0.0])
dist.broadcast(b, 0)
print("broadcast", b.tolist())
sub = dist.new_group([0, 1])
x = torch.ones(3)
dist.all_reduce(x, group=sub)
print("new_group", dist.get_backend(sub), x.tolist())
dist.destroy_process_group()
print("done")
"""


def test_a_gloo_program_behaves_exactly_as_without_hetccl(tmp_path):
    prog = tmp_path / "gloo_program.py"
    prog.write_text(GLOO_PROGRAM)
    where = _install_entry_point(tmp_path / "dist")
    runs = {}
    for autoload in ("1", "0"):                        # both cases at once: 4 processes
        port = free_port()
        env = {**ENV, "TORCH_DEVICE_BACKEND_AUTOLOAD": autoload, "PYTHONPATH": _path(where)}
        runs[autoload] = [start_command([sys.executable, str(prog), str(r), "2", str(port)], env=env)
                          for r in range(2)]
    out = {}
    try:
        for autoload, procs in runs.items():
            out[autoload] = []
            for p in procs:
                stdout, stderr = p.communicate(timeout=150)
                assert p.returncode == 0, stderr[-3000:]
                out[autoload].append((stdout, stderr))
    finally:
        for procs in runs.values():
            for p in procs:
                stop_command(p)
    for rank in range(2):
        with_hetccl, without = out["1"][rank], out["0"][rank]
        assert with_hetccl[1].splitlines()[0] == "registered", with_hetccl[1]
        assert without[1].splitlines()[0] == "not registered", without[1]
        assert with_hetccl[0] == without[0], (with_hetccl[0], without[0])
        assert "env:// -> ValueError" in with_hetccl[0] and "RANK expected" in with_hetccl[0]
        assert with_hetccl[0].rstrip().endswith("done")
        assert "hetccl" not in with_hetccl[1].replace("registered", ""), with_hetccl[1]
    assert "all_reduce [0.0, 3.0, 6.0, 9.0]" in out["1"][0][0]


HETCCL_ENV_PROGRAM = """
import os, sys
import torch
import torch.distributed as dist
loaded = sorted(m for m in sys.modules if m.startswith("hetccl") or m in ("ml_dtypes", "zmq"))
print("after import torch:", " ".join(loaded))
os.environ.update(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0",
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
try:
    dist.init_process_group("gloo")
except ValueError as e:
    print("gloo env://:", e)
dist.init_process_group("hetccl")                     # env:// with the rank and size of Slurm's
t = torch.ones(3)
dist.all_reduce(t)
print("hetccl env://:", dist.get_backend(), dist.get_world_size(), t.tolist())
dist.destroy_process_group()
"""


def test_import_torch_only_registers_and_env_rendezvous_changes_for_hetccl_only(tmp_path):
    where = _install_entry_point(tmp_path)
    p = run_command([sys.executable, "-c", HETCCL_ENV_PROGRAM, str(free_port())], timeout=150,
                    env={**ENV, "PYTHONPATH": _path(where, IMPORT_ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = p.stdout.splitlines()[0].split(":", 1)[1].split()
    assert set(loaded) <= {"hetccl", "hetccl.errors", "hetccl.ops", "hetccl._checkout", "hetccl.version", "hetccl_torch_entry",
                           "hetccl.torch", "hetccl.torch.autoload", "hetccl.torch.launch", "hetccl.torch.name"}, loaded
    assert "gloo env://: Error initializing torch.distributed using env:// rendezvous: " \
           "environment variable RANK expected" in p.stdout, p.stdout
    assert "hetccl env://: hetccl 1 [1.0, 1.0, 1.0]" in p.stdout, p.stdout
    assert WARNING not in p.stderr, p.stderr
