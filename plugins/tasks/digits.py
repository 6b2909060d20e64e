"""The scikit-learn 8x8 digits (1797 images, shipped with scikit-learn) shared by the digit tasks."""
from __future__ import annotations

import numpy as np


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All digits as float64 images [N, 8, 8] with values 0..16, and int64 labels [N]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target.astype(np.int64)


def check_split(train_size: int, heldout_size: int) -> None:
    """Raise ``ValueError`` unless ``train_size`` + ``heldout_size`` disjoint digits exist (each >= 2)."""
    total = len(load_digit_images()[1])
    if train_size < 2 or heldout_size < 2:
        raise ValueError(f"train_size and heldout_size must be >= 2, got {train_size} and {heldout_size}")
    if train_size + heldout_size > total:
        raise ValueError(f"train_size + heldout_size = {train_size + heldout_size} exceeds the {total} "
                         f"digits of scikit-learn; lower one of them")
