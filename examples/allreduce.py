"""hetccl without torch: allreduce a numpy array over every rank (run: hetccl run -n 2 python examples/allreduce.py)."""
import numpy as np

import hetccl

comm = hetccl.init()                                  # rank and size from hetccl run / mpirun / torchrun
x = np.full(1 << 20, comm.rank + 1, dtype=np.float32)
comm.allreduce(x, hetccl.SUM)                         # in place: every element is 1 + 2 + ... + size
assert x[0] == comm.size * (comm.size + 1) / 2
print(f"rank {comm.rank} of {comm.size}: x[0] = {x[0]} via {comm.last_algorithm} over {comm.transport((comm.rank + 1) % comm.size)}")
comm.close()
