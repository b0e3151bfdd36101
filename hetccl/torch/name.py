"""The torch.distributed backend name hetccl registers (autoload.py) and its groups report
(process_group.py): one constant both read, so neither imports the other for it."""
BACKEND_NAME = "hetccl"
