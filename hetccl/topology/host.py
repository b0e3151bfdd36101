"""Host identity: which ranks share a machine (and so can share memory).

A hostname alone is not enough: containers on one host may have different hostnames yet share
/dev/shm, and cloned VMs may share a hostname. We combine the hostname with the kernel boot id (unique
per boot of a kernel, shared by every container on it) and fall back to /etc/machine-id.
``HETCCL_HOST_ID`` overrides the whole thing (tests use it to make namespaces look like hosts).
"""
import os
import socket


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def host_id() -> str:
    """A string equal for exactly the ranks that share a host's memory."""
    override = os.environ.get("HETCCL_HOST_ID")
    if override:
        return override
    boot = _read("/proc/sys/kernel/random/boot_id") or _read("/etc/machine-id")
    return f"{socket.gethostname()}/{boot}"
