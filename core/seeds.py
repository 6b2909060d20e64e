"""Seeds derived from ``(run seed, generation, role)``.

Every random draw in a run takes its seed from here, so results do not depend
on where a run was resumed or on how many workers ran. The global random states
are captured and restored here too, for step checkpoints.
"""
import hashlib
import random

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


def global_rng_states() -> dict:
    """The global random states (torch CPU and CUDA, NumPy, Python), as a checkpoint can store them."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_global_rng_states(states: dict) -> None:
    """Restore what :func:`global_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
