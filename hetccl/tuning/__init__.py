"""Tuning: ``hetccl tune`` measures the job's links and algorithms and writes the tuning file that
the communicator and ``hetccl simulate`` read (file.py)."""
