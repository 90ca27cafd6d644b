"""Limits shared by the kernel generators and the schedules (a leaf: it imports nothing)."""

MAX_TOKENS = 2**31 - 1  # the largest token count a kernel table covers (int32 N)
