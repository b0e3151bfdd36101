"""One rank of a netns test: ``python -m tests.netns.rank_main module:function JSON-ARGS``.

Runs ``function(rank, size, *args)`` (rank/size from HETCCL_RANK/HETCCL_SIZE) and prints its
JSON result on one line prefixed by RESULT_TAG; a failure prints the traceback and exits 1.
"""
import importlib
import json
import os
import sys
import traceback

RESULT_TAG = "HETCCL-NETNS-RESULT "


def main(argv) -> int:
    target, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else []
    mod, _, fn = target.partition(":")
    try:
        func = getattr(importlib.import_module(mod), fn)
        result = func(int(os.environ["HETCCL_RANK"]), int(os.environ["HETCCL_SIZE"]), *args)
    except BaseException:                       # noqa: BLE001 - reported to the harness
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
