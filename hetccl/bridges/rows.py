"""Every native library row hetccl knows (vendor.py's ``Vendor``), in the order `hetccl doctor`
lists them, and by kind.

Why a module of its own: the finders (libraries.py), island formation (formation.py) and the
per-family modules all need the list, and none of those should import the others to get it.
Adding an NCCL-API vendor is still one data row (in nccl.py's FAMILY); a new call family is a
module like cncl.py plus its row here.
"""
from __future__ import annotations

from . import bkcl, cncl, hccl, nccl

ROWS = nccl.FAMILY + (hccl.HCCL, cncl.CNCL, bkcl.BKCL)
BY_KIND = {v.kind: v for v in ROWS}
