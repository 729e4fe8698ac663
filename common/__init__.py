"""Foundations every package shares and that import nothing of ours: the user-error base class,
atomic file writes, the device resolver and the CPU description."""
