"""Which hetccl this is: the version, and the build of its native core.

Measurements (the cost-model cache, tuning files) record ``build_id()``: a rebuilt engine may cost
differently, so another build's numbers are not reused. Standard library only, so every layer may
import it (``import hetccl`` loads it).
"""
import glob
import hashlib
import os

__version__ = "0.1.0"


def build_id() -> str:
    """hetccl's version plus a fingerprint of the native modules (their names, sizes and times)."""
    native = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native")
    h = hashlib.blake2b(digest_size=6)
    for path in sorted(glob.glob(os.path.join(native, "*.so"))):
        st = os.stat(path)
        h.update(f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return f"{__version__}+{h.hexdigest()}"
