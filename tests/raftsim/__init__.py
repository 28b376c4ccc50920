"""Deterministic Raft simulator (in the style of TigerBeetle's VOPR).

One integer seed drives a whole cluster: fake network, fake clock, crashes
with loss of unsynced writes, partitions, membership changes, leadership
transfers, snapshots, client writes and ReadIndex reads; invariants are
checked after every step. Replay a seed with ``python -m tests.raftsim SEED --verbose``.
"""

from .sim import SimResult, Simulator, run_seed

__all__ = ["SimResult", "Simulator", "run_seed"]
