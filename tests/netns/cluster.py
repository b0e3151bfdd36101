"""Simulated hosts on one machine: network namespaces joined by veth pairs through a bridge.

    with NetnsCluster(hosts=2, rate="1gbit") as c:          # root only; see unavailable_reason()
        results = c.run("tests.netns.cases:allreduce_case", placement=[0, 1, 0, 1], args=[...])

Layout (names carry a per-run tag, so concurrent runs and leftovers of a killed run never clash):

    ns hcs<tag> (switch): bridge br0, one veth end per host, egress shaped with tbf
    ns hch<tag>h<i> (host i): eth0 = 10.<a>.<b>.<i+1>/24, egress shaped with tbf, lo up

Every address lives only inside these namespaces (a /24 of 10/8 chosen per run), so nothing on the
machine's own network is touched. Each rank runs as ``ip netns exec <host ns> unshare --uts`` with
the hostname set to the host's name, so hetccl's host identity (hostname + boot id) differs per
namespace exactly as across real machines; ``host_id="env"`` uses HETCCL_HOST_ID instead. Ranks of one
host share /dev/shm (one mount namespace), so they use shared memory; ranks of different hosts can
only reach each other through the shaped veths, over TCP.

The namespaces (and with them the veths and the bridge) are deleted on exit even if the body
failed, after killing any process still inside them. tbf (token bucket) is the shaper: netem is not
available in this kernel.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time

from tests.launcher import IMPORT_ROOT
from tests.netns.rank_main import RESULT_TAG


def unavailable_reason() -> str | None:
    """Why netns tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (ip netns add)"
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found: install iproute2 and util-linux (apt-get install iproute2)"
    tag = f"hcprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", tag], capture_output=True, text=True)
    if r.returncode != 0:
        # the machine (its kernel or sandbox) refuses namespaces: a limit of the machine, not of
        # the install, so CI's --only-hardware-skips lets it pass (tests/conftest.py)
        return f"hardware: cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", tag], capture_output=True)
    return None


def _sh(*cmd, check=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


class NetnsCluster:
    def __init__(self, hosts=2, rate="1gbit", burst="128kb", tag=None):
        """burst: tbf bucket; small enough that messages do not skip the shaping (128 kB still
        reaches ~95% of 1 Gbit/s with one TCP stream; veth GSO segments need >= 64 kB)."""
        self.hosts = hosts
        self.rate = rate
        self.burst = burst
        self.tag = tag or f"{os.getpid() % 100000}{random.randrange(100):02d}"
        self.switch = f"hcs{self.tag}"
        self.host_ns = [f"hch{self.tag}h{i}" for i in range(hosts)]
        self.hostnames = [f"nshost{i}-{self.tag}" for i in range(hosts)]
        net = random.randrange(1, 250 * 250)
        self.prefix = f"10.{100 + net // 250 % 150}.{net % 250}"
        self.addrs = [f"{self.prefix}.{i + 1}" for i in range(hosts)]

    # ------------------------------------------------------------------ set-up / tear-down

    def __enter__(self):
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    def _shape(self, ns, dev):
        if self.rate:
            _sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
                "burst", self.burst, "latency", "50ms")

    def _create(self):
        _sh("ip", "netns", "add", self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i, ns in enumerate(self.host_ns):
            _sh("ip", "netns", "add", ns)
            port = f"p{i}"
            _sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "-n", self.switch, "link", "set", port, "master", "br0")
            _sh("ip", "-n", self.switch, "link", "set", port, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addrs[i]}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._shape(ns, "eth0")                 # host -> switch
            self._shape(self.switch, port)          # switch -> host

    def _kill_inside(self, ns):
        pids = _sh("ip", "netns", "pids", ns, check=False).split()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in pids:
                try:
                    os.kill(int(p), sig)
                except (OSError, ValueError):
                    pass
            if sig == signal.SIGTERM and pids:
                time.sleep(0.5)
                pids = _sh("ip", "netns", "pids", ns, check=False).split()

    def destroy(self):
        for ns in self.host_ns + [self.switch]:
            if ns in self.namespaces():
                self._kill_inside(ns)
                _sh("ip", "netns", "del", ns, check=False)

    @staticmethod
    def namespaces() -> list[str]:
        return [line.split()[0] for line in _sh("ip", "netns", "list", check=False).splitlines() if line.strip()]

    def leftovers(self) -> list[str]:
        return [ns for ns in self.namespaces() if self.tag in ns]

    # ------------------------------------------------------------------ running ranks

    def command(self, host, argv, host_id="uts"):
        """argv run as a process of simulated host ``host``."""
        inner = " ".join(_quote(a) for a in argv)
        if host_id == "uts":
            return ["ip", "netns", "exec", self.host_ns[host], "unshare", "--uts", "sh", "-c",
                    f"hostname {self.hostnames[host]} && exec {inner}"]
        return ["ip", "netns", "exec", self.host_ns[host], *argv]

    def rank_env(self, rank, placement, port, secret, job, host_id="uts", extra=None):
        h = placement[rank]
        local = [r for r in range(len(placement)) if placement[r] == h]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HETCCL_")}
        env.update(HETCCL_RANK=str(rank), HETCCL_SIZE=str(len(placement)),
                   HETCCL_LOCAL_RANK=str(local.index(rank)), HETCCL_LOCAL_SIZE=str(len(local)),
                   HETCCL_STORE=f"{self.addrs[placement[0]]}:{port}", HETCCL_SECRET=secret,
                   HETCCL_JOB_ID=job, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   PYTHONPATH=IMPORT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if host_id == "env":
            env["HETCCL_HOST_ID"] = self.hostnames[h]
        env.update(extra or {})
        return env

    def link(self, host, up):
        """Take host ``host``'s link to the switch down (or up again): its ranks and the others can
        no longer reach each other, and nobody is told (no FIN, no RST)."""
        _sh("ip", "-n", self.host_ns[host], "link", "set", "eth0", "up" if up else "down")

    def run(self, target, placement, args=(), timeout=120.0, host_id="uts", env=None, during=None):
        """Run ``target`` ('module:function') as len(placement) ranks, rank r on host placement[r];
        returns the rank-ordered results (JSON). Raises AssertionError with every failing rank's
        output; every rank still running at the deadline is killed. ``during()``, if given, runs
        in this process once every rank has started (fault injection: ``link``)."""
        ranks = self.run_raw(target, placement, args, timeout, host_id, env, during)
        failed = [f"---- rank {r} (host {placement[r]}) exit {o['exitcode']} ----\n{o['output']}"
                  for r, o in enumerate(ranks) if o["state"] != "ok"]
        if failed:
            raise AssertionError(f"{target} failed on {len(failed)} rank(s):\n" + "\n".join(failed))
        if ranks and ranks[0]["leftovers"]:
            raise AssertionError(f"every rank succeeded but shared-memory segments were left (removed "
                                 f"now): {ranks[0]['leftovers']}")
        return [o["value"] for o in ranks]

    def run_raw(self, target, placement, args=(), timeout=120.0, host_id="uts", env=None, during=None,
                victims=()):
        """``run`` without raising for a rank (fault injection, tests/faults): per rank
        ``{"state", "value", "exitcode", "output", "leftovers"}``, state "ok" (value: its JSON
        result), "died" (a rank of ``victims`` that exited without a result), "hang" (killed at
        the deadline) or "err"; a negative exitcode is the signal that ended the rank."""
        port = random.randrange(20000, 60000)
        secret, job = secrets.token_hex(32), secrets.token_hex(4)
        procs, hung = [], set()
        try:
            for r in range(len(placement)):
                argv = [sys.executable, "-m", "tests.netns.rank_main", target, json.dumps(list(args))]
                procs.append(subprocess.Popen(self.command(placement[r], argv, host_id), cwd=IMPORT_ROOT,
                                              env=self.rank_env(r, placement, port, secret, job, host_id, env),
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              start_new_session=True))
            deadline = time.monotonic() + timeout
            if during is not None:
                during()
            outs = []
            for r, p in enumerate(procs):
                try:
                    outs.append(p.communicate(timeout=max(0.1, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    _killpg(p)
                    hung.add(r)
                    outs.append(p.communicate())
                    outs[-1] = (outs[-1][0], outs[-1][1] + f"\n[killed at the {timeout:g} s deadline]")
        finally:
            for p in procs:
                if p.poll() is None:
                    _killpg(p)
                    p.wait()
            left = _remove_shm(job)
        ranks = []
        for r, (p, (out, err)) in enumerate(zip(procs, outs)):
            line = next((ln for ln in out.splitlines() if ln.startswith(RESULT_TAG)), None)
            if r in hung:
                state = "hang"
            elif p.returncode == 0 and line is not None:
                state = "ok"
            else:
                state = "died" if r in victims and line is None else "err"
            ranks.append({"state": state, "value": json.loads(line[len(RESULT_TAG):]) if line else out + err,
                          "exitcode": p.returncode, "output": out + err, "leftovers": left})
        return ranks


def _quote(a):
    import shlex
    return shlex.quote(a)


def _killpg(p):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except OSError:
            return
        try:
            p.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _remove_shm(job) -> list[str]:
    """Remove (and return) the job's segments left in /dev/shm."""
    import glob
    left = sorted(glob.glob(f"/dev/shm/hetccl-{job}-*") + glob.glob(f"/dev/shm/hetccl-pair-*-{job}-*"))
    for path in left:
        try:
            os.unlink(path)
        except OSError:
            pass
    return left
