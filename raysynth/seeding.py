"""Stable seeds and ids derived from their parts by hashing — never from time or arrival order."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: object) -> str:
    """Hex SHA-256 of the parts' ``repr`` joined by ``|`` (stable across processes and runs)."""
    return hashlib.sha256("|".join(repr(p) for p in parts).encode()).hexdigest()


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the parts (fits every RNG's seed range)."""
    return int(stable_hash(*parts)[:8], 16) & 0x7FFFFFFF
