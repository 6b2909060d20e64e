"""hf-lm on vLLM (``backend: vllm``): the CPU build of vLLM on a tiny Llama (head size 32, as vLLM's CPU
attention needs) saved with ``save_pretrained``, compared with the built-in path on the same weights.

One in-process engine serves the module's direct tests (it starts in seconds); the CLI run starts one per
generation. Skipped where vLLM is not installed (install the ``vllm`` extra: README, "Backends").
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from collapsekit.errors import ConfigError
from collapsekit.plugins import vllm_backend
from collapsekit.plugins.tasks.bible_lm import book_text
from collapsekit.plugins.tasks.hf_lm import HFCausalLM

# vLLM is imported by the first test that needs it, not when the suite is collected
pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="the vllm extra is not installed")

CLASS_PATH = "collapsekit.plugins.tasks.hf_lm.HFCausalLM"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A BPE tokenizer (300 ids, its one special token is id 0, so every id is content), a 1-layer Llama with
    two heads of size 32, and a JSONL corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("vllm")
    verses = [v for book in ("Ruth", "Jonah") for v in book_text(book).splitlines()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(verses, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         initializer_range=0.2)       # spread-out logits: no near-ties for greedy decoding
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"body": " ".join(verses[i:i + 8])}) + "\n"
                                               for i in range(0, len(verses), 8)))
    return root


def task_args(assets: Path, **extra) -> dict:
    return {"model": str(assets / "llama"), "data": {"path": "json", "data_files": str(assets / "corpus.jsonl")},
            "text_key": "body", "block_size": 16, "max_blocks": 48, "max_heldout_blocks": 16, "batch_size": 8,
            "lr": 1e-3, "eval_batch_size": 16, **extra}


@pytest.fixture(scope="module")
def pair(assets, tmp_path_factory):
    """``(hf task, vllm task, model, saved directory)``: both continue 8-token prefixes of real blocks by 8 tokens;
    the model is saved as a generation's ``model/`` is, so the engine loads that directory."""
    hf = HFCausalLM(**task_args(assets, prompt="train_prefix", max_new_tokens=8))
    vl = HFCausalLM(**task_args(assets, prompt="train_prefix", max_new_tokens=8, backend="vllm"))
    for task in (hf, vl):
        task.setup(0)
    model = vl.build_model().eval()
    gen_dir = tmp_path_factory.mktemp("gen_0")
    vl.save_model(model, gen_dir)
    yield hf, vl, model, gen_dir / "model"
    vl.release_inference()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_greedy_pools_equal_the_built_in_sampler_and_the_engine_loads_the_saved_model(pair):
    hf, vl, model, saved = pair
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    ours = vl.sample(model, 24, gen(0), temperature=0.0)["tokens"]
    assert vl.inference.engine.directory == saved and not vl.inference.engine.owned
    assert vl.inference.engine.in_process
    builtin = hf.sample(model, 24, gen(0), temperature=0.0)["tokens"]
    assert ours.shape == builtin.shape == (24, 17)
    np.testing.assert_array_equal(ours, builtin)
    assert len({tuple(r) for r in ours[:, 9:]}) > 1                 # not one degenerate continuation
    # the in-process engine leaves this process as it was
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng)


def test_sampled_pools_are_reproducible_and_every_item_differs(pair):
    _, vl, model, _ = pair
    first = vl.sample(model, 32, gen(1))["tokens"]
    again = vl.sample(model, 32, gen(1))["tokens"]
    other = vl.sample(model, 32, gen(2))["tokens"]
    np.testing.assert_array_equal(first, again)
    assert len({tuple(r) for r in first[:, 9:]}) == 32              # one seed per item: no copies
    assert not np.array_equal(first, other)
    assert first[:, 1:].min() >= 1 and first.max() < vl.vocab_size   # BOS / specials never sampled (BOS = id 0)
    # a shard's first items do not depend on how many it holds (per-item seeds from the shard's generator)
    np.testing.assert_array_equal(vl.sample(model, 8, gen(1))["tokens"], first[:8])


def test_scores_and_token_editing_on_vllm_match_the_hf_path(pair):
    from collapsekit_token_editing import edit_scored, scored_statistics
    from collapsekit_token_editing.plugin import TokenEditing

    hf, vl, model, _ = pair
    rows = hf.train_tokens[:12]
    ours, theirs = vl.token_scores(model, rows, 8), hf.token_scores(model, rows, 8)
    assert ours.logp.shape == (12, 16) and ours.ids.shape == (12, 16, 8)
    torch.testing.assert_close(ours.logp, theirs.logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.top_logp, theirs.top_logp, atol=1e-4, rtol=0)
    assert torch.equal(ours.ids, theirs.ids)
    # a threshold in the widest gap of the middle of the probabilities: both paths flag the same positions
    p = np.sort(theirs.logp.exp().flatten().numpy())
    middle = p[len(p) // 4: 3 * len(p) // 4]
    gap = int(np.argmax(np.diff(middle)))
    threshold = float(middle[gap:gap + 2].mean())
    content = torch.as_tensor(rows[:, 1:])
    edits = [edit_scored(content, s.logp, s.ids, s.top_logp, threshold, gen(3)) for s in (ours, theirs)]
    assert torch.equal(edits[0], edits[1]) and not torch.equal(edits[0], content)
    stats = [scored_statistics(content, e, s.logp, threshold) for e, s in zip(edits, (ours, theirs))]
    assert stats[0] == stats[1] and 0.2 < stats[0]["share_above"] < 0.8
    # the plugin itself, on both backends (one shard holding the whole generation)
    plugin = TokenEditing(threshold=threshold, top_k=8)
    out = [plugin.synthesize(SimpleNamespace(task=t), model, 0, SimpleNamespace(start=0, size=24, total=24,
                                                                               generator=gen(4)))["tokens"]
           for t in (vl, hf)]
    np.testing.assert_array_equal(out[0], out[1])


def test_engine_memory_is_released_and_an_unsaved_model_gets_a_temporary_copy(pair):
    hf, vl, _, _ = pair
    model = vl.build_model().eval()                     # a new model, never saved: the old engine goes
    assert vl.inference.engine is None
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)                  # other weights than the saved ones
    rows = vl.sample(model, 4, gen(5), temperature=0.0)["tokens"]
    engine = vl.inference.engine
    assert engine.owned and (engine.directory / "config.json").exists()
    np.testing.assert_array_equal(rows, hf.sample(model, 4, gen(5), temperature=0.0)["tokens"])
    vl.release_inference()
    assert vl.inference.engine is None and not engine.directory.exists()
    assert not torch.distributed.is_initialized()       # the in-process engine's process group is gone


def test_every_language_task_samples_on_vllm_from_its_saved_model(tmp_path):
    """The backend is the shared language path's: markov-text (a GPT-2 over its word tokenizer, head size 32)
    saves gen_k/model/, the engine loads that folder and its greedy rows equal the built-in sampler's."""
    from collapsekit.plugins.tasks.markov_text import MarkovText

    args = {"vocab_size": 16, "seq_len": 12, "train_size": 32, "heldout_size": 8, "n_layer": 1, "n_embd": 64}
    hf, vl = MarkovText(**args), MarkovText(**args, backend="vllm")
    torch.manual_seed(0)
    model = vl.build_model().eval()
    vl.save_model(model, tmp_path)
    try:
        ours = vl.sample(model, 16, gen(0), temperature=0.0)["tokens"]
        assert vl.inference.engine.directory == tmp_path / "model"
        builtin = hf.sample(model, 16, gen(0), temperature=0.0)["tokens"]
        np.testing.assert_array_equal(ours, builtin)
        sampled = vl.sample(model, 16, gen(1))["tokens"]
        assert sampled.shape == (16, 13) and (sampled[:, 0] == vl.bos_id).all() and sampled[:, 1:].max() < 16
        assert len({tuple(r) for r in sampled}) > 1
        # its rows fill the GPT-2's context, leaving vLLM no room to score them: the logits score them
        ours, theirs = vl.token_scores(model, sampled, 4), hf.token_scores(model, sampled, 4)
        assert torch.equal(ours.logp, theirs.logp) and torch.equal(ours.ids, theirs.ids)
    finally:
        vl.release_inference()
    assert vl.inference.engine is None


def test_settings_vllm_cannot_honour_and_bad_engine_arguments_are_one_line(assets, monkeypatch):
    cases = [
        ({"vllm": {"gpu_memory_utilisation": 0.5}},
         "unknown vllm engine argument 'gpu_memory_utilisation' (did you mean 'gpu_memory_utilization'?)"),
        ({"vllm": {"model": "x"}}, "vllm.model is set by collapsekit"),
        ({"generation": {"num_beams": 4}}, "cannot honour generation.num_beams"),
        ({"generation": {"no_repeat_ngram_size": 3}}, "cannot honour generation.no_repeat_ngram_size"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError) as err:
            HFCausalLM(**task_args(assets, backend="vllm", **extra))
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="vllm settings are given but backend is 'hf'"):
        HFCausalLM(**task_args(assets, vllm={"max_num_seqs": 4}))
    # offline: a model that is not local stops before vLLM is involved, with the same one line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="no-such-org/no-such-model-xyz"):
        HFCausalLM(model="no-such-org/no-such-model-xyz", backend="vllm")
    # without vLLM installed: one line saying how to install it
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=r"backend vllm needs the vllm package.*pip install vllm on a GPU"):
        vllm_backend.import_vllm()


def test_a_bad_engine_value_is_one_line(assets, tmp_path):
    task = HFCausalLM(**task_args(assets, backend="vllm", vllm={"max_model_len": 1000}))
    task.setup(0)
    model = task.build_model()
    with pytest.raises(ConfigError) as err:
        task.sample(model, 2, gen(0))
    text = str(err.value)
    assert "vLLM could not start" in text and "max_model_len" in text and "\n" not in text
    assert task.inference.engine is None and not torch.distributed.is_initialized()


def test_two_generations_through_the_cli(assets, tmp_path, cli):
    """A real ``collapsekit run`` (in this process: vLLM is imported once) that loads each generation's saved model."""
    config = {"run": {"name": "v", "root": str(tmp_path / "runs"), "generations": 2, "seed": 0,
                      "samples_per_generation": 24},
              "task": {"class_path": CLASS_PATH, "init_args": task_args(assets, backend="vllm")},
              "trainer": {"max_steps": 3, "accelerator": "cpu", "enable_progress_bar": False, "logger": False}}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = cli("run", "--config", path, "--task.init_args.vllm", "{gpu_memory_utilisation: 0.5}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "unknown vllm engine argument 'gpu_memory_utilisation'" in err
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    run_dir = tmp_path / "runs" / "v"
    assert "generation 1:" in out and "heldout_ppl" in out
    for g in (0, 1):
        tokens = np.load(run_dir / f"gen_{g}" / "pool" / "tokens.npy")
        assert tokens.shape == (24, 17) and len({tuple(r) for r in tokens}) == 24
        metrics = json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text())
        assert np.isfinite(metrics["heldout_ppl"]) and metrics["synthetic/kept"] == 24
    assert not torch.distributed.is_initialized()


def test_engine_copies_keep_tied_weights_and_load_with_from_pretrained(assets, tmp_path):
    """What a DDP rank other than 0 writes for its engine (``save_pretrained`` writes only on rank 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(assets / "llama")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=1, n_head=2))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()      # tied
    vllm_backend.save_for_engine(model, tokenizer, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(tokenizer)
