"""The one transformers path of the language tasks (collapsekit.plugins.tasks.language): every built-in token
task saves a `model/` folder that plain `transformers` opens with its tokenizer, and reads back the same model;
folders of an earlier collapsekit (`model.pt`) still load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from collapsekit.plugins.tasks.bible_lm import BibleLM
from collapsekit.plugins.tasks.facts_unlearning import FactsUnlearning
from collapsekit.plugins.tasks.markov_text import MarkovText
from collapsekit.plugins.tasks.multiplication import Multiplication

TASKS = [MarkovText, BibleLM, Multiplication, FactsUnlearning]


@pytest.mark.parametrize("cls", TASKS, ids=lambda c: c.name)
def test_model_folder_opens_with_plain_transformers(cls, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = cls(**cls.preset("smoke")["task"])
    task.setup(0)
    torch.manual_seed(0)
    model = task.build_model()
    files = task.save_model(model, tmp_path)
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json"} <= set(files)
    assert all((tmp_path / f).is_file() for f in files)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    rows = torch.as_tensor(task.heldout_tokens[:4])
    assert torch.equal(loaded(input_ids=rows[:, :-1]).logits, task.token_logits(model, rows))
    assert torch.equal(task.token_logits(task.load_model(tmp_path), rows), task.token_logits(model, rows))
    # the saved tokenizer is the task's: BOS is the row's first id, and the text of a row encodes back to it
    assert len(tokenizer) == loaded.config.vocab_size == task.vocab_size + 1 and tokenizer.bos_token_id == task.bos_id
    text = task.decode(task.heldout_tokens[:1])[0]
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == task.heldout_tokens[0, 1:].tolist()


def test_a_folder_with_model_pt_of_an_earlier_collapsekit_still_loads(tmp_path):
    task = MarkovText(**MarkovText.preset("smoke")["task"])
    torch.manual_seed(0)
    model = task.build_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")           # what gen_<k>/ held before model/
    rows = torch.as_tensor(np.random.default_rng(0).integers(0, task.vocab_size, (3, 9)))
    assert torch.equal(task.token_logits(task.load_model(tmp_path), rows), task.token_logits(model, rows))
