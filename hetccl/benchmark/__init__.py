"""nccl-tests-style benchmarks, shared by hetccl and the peer libraries it is compared against.

- :mod:`.format`: sizes, counts and bus-bandwidth factors exactly as nccl-tests defines them, and
  the text table (``size count type redop time(us) algbw busbw #wrong``).
- :mod:`.runner`: :func:`~.runner.run_sweep`, the one timing method every library is measured with,
  driven through a small adapter object (see :class:`~.runner.Adapter`).
- :mod:`.cli`: ``hetccl bench`` (:func:`~.cli.bench_main`) and the argument parsing the peer
  benchmarks in ``bench/peers/`` reuse.

This package imports nothing from the rest of hetccl at module level (only :mod:`.cli` imports
``hetccl`` when the hetccl adapter is built), so the peer benchmarks can load it from a source tree
without importing hetccl itself.
"""
