"""Seeds derived from ``(run seed, generation, role)``.

Every random draw in a run takes its seed from here, so results do not depend
on where a run was resumed or on how many workers ran.
"""
import hashlib

import numpy as np
import torch


def derive_seed(seed: int, generation: int, role: str) -> int:
    """A 63-bit seed that is a pure function of ``(seed, generation, role)``."""
    digest = hashlib.sha256(f"{int(seed)}/{int(generation)}/{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def torch_generator(seed: int, generation: int, role: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, generation, role))


def numpy_rng(seed: int, generation: int, role: str) -> np.random.Generator:
    """A NumPy ``Generator`` seeded with :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(seed, generation, role))
