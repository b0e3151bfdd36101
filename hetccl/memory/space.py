"""What to say when /dev/shm cannot hold a segment.

/dev/shm is a tmpfs with a size limit of its own (half the RAM by default, 64 MiB in a default
Docker container), shared by every process of the host. A segment is backed at creation
(``posix_fallocate``), so a full /dev/shm is an ``ENOSPC`` there, turned into this error, rather than a
SIGBUS at the first touch of a page the kernel could not provide.
"""
from __future__ import annotations

import errno
import os

from ..errors import TransportError

SHM_DIR = "/dev/shm"


def shm_space_error(what: str, nbytes: int, err: int, instead: str) -> TransportError:
    """The error for ``what`` (``nbytes`` bytes) failing with errno ``err``; ``instead`` says how to
    do without shared memory there."""
    text = f"cannot create {what} of {nbytes} bytes: {os.strerror(err)}"
    if err in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
        text += (f"; {SHM_DIR} is full or too small (`df -h {SHM_DIR}`): free space there, give the "
                 f"container a larger one (docker run --shm-size=..., Kubernetes: an emptyDir of "
                 f"medium Memory on {SHM_DIR}), or {instead}")
    return TransportError(text)
