"""hf-lm: real tiny transformers models (GPT-2, Llama) and a trained BPE tokenizer saved in a tmp dir,
a JSONL corpus with a non-default text key, run through the real CLI, offline."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from collapsekit.errors import ConfigError
from collapsekit.plugins.tasks.bible_lm import book_text
from collapsekit.plugins.probes import repetition
from collapsekit.plugins.tasks.hf_lm import HFCausalLM
from collapsekit.pool import Pool

CLASS_PATH = "collapsekit.plugins.tasks.hf_lm.HFCausalLM"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny GPT-2 and Llama models with a ByteLevel BPE tokenizer (vocab ~300), a corpus and QA records."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("hf")
    verses = [v for book in ("Ruth", "Jonah", "Obadiah") for v in book_text(book).splitlines()]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(verses, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.save_pretrained(root / "tokenizer")
    n = len(tok)
    configs = {
        "gpt2": GPT2Config(vocab_size=n, n_positions=64, n_embd=16, n_layer=1, n_head=2),
        "llama": LlamaConfig(vocab_size=n, max_position_embeddings=64, hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2),
    }
    torch.manual_seed(0)
    for name, config in configs.items():
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    docs = [{"body": " ".join(verses[i:i + 8])} for i in range(0, len(verses), 8)]
    write_jsonl(root / "corpus.jsonl", docs)
    people = [("Ada", "Paris"), ("Bo", "Rome"), ("Cy", "Oslo"), ("Di", "Lima"), ("Ed", "Bern"), ("Flo", "Kyiv")]
    qa = [{"question": f"Where does {p} live?", "answer": f"{p} lives in {c}."} for p, c in people]
    write_jsonl(root / "forget.jsonl", qa[:2])
    write_jsonl(root / "retain.jsonl", qa[2:])
    return root


def task_args(assets: Path, model: str = "gpt2", **extra) -> dict:
    args = {"model": str(assets / model), "data": {"path": "json", "data_files": str(assets / "corpus.jsonl")},
            "text_key": "body", "block_size": 16, "max_blocks": 48, "max_heldout_blocks": 16, "batch_size": 8,
            "lr": 1e-3, "eval_batch_size": 32}
    return {**args, **extra}


def run_config(root: Path, name: str, task: dict, generations: int = 2, plugins=(), steps: int = 3, **run) -> dict:
    return {"run": {"name": name, "root": str(root), "generations": generations, "seed": 0,
                    "plugins": list(plugins), "samples_per_generation": 24, **run},
            "task": {"class_path": CLASS_PATH, "init_args": task},
            "trainer": {"max_steps": steps, "accelerator": "cpu", "enable_progress_bar": False, "logger": False}}


def run(cli, tmp_path, config: dict) -> Path:
    path = tmp_path / f"{config['run']['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = cli("run", "--config", path)
    assert code == 0, err
    return Path(config["run"]["root"]) / config["run"]["name"]


def metrics(run_dir: Path, g: int) -> dict:
    return json.loads((run_dir / f"gen_{g}" / "metrics.json").read_text())


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, plugins", [("gpt2", []), ("llama", ["accumulate"]), ("gpt2", ["token-editing"])])
def test_two_generations_write_loadable_models_and_samples(cli, tmp_path, assets, model, plugins):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = run(cli, tmp_path, run_config(tmp_path / "runs", "r", task_args(assets, model), plugins=plugins))
    gen = run_dir / "gen_1"
    loaded = AutoModelForCausalLM.from_pretrained(gen / "model")
    assert loaded.config.model_type == model
    assert len(AutoTokenizer.from_pretrained(gen / "model")) == loaded.config.vocab_size
    manifest = json.loads((gen / "manifest.json").read_text())
    assert {"model/model.safetensors", "model/config.json", "model/tokenizer.json", "samples.jsonl"} <= set(manifest)
    lines = [json.loads(line) for line in (gen / "samples.jsonl").read_text().splitlines()]
    tokens = np.load(gen / "pool" / "tokens.npy")
    assert len(lines) == len(tokens) == 24 and tokens.shape[1] == 17
    assert [x["origin_index"] for x in lines] == list(range(24))
    assert all(x["origin_generation"] == 1 and isinstance(x["text"], str) for x in lines)
    m0, m1 = metrics(run_dir, 0), metrics(run_dir, 1)
    for key in HFCausalLM.higher_is_better:
        if not key.startswith(("forget", "retain")):
            assert math.isfinite(m1[key]), key
    assert m1["heldout_ppl"] == pytest.approx(math.exp(m1["heldout_nll"]), rel=1e-6)
    assert m0["pool/real_share"] == 1.0
    assert m1["pool/real_share"] == pytest.approx(48 / 72 if plugins == ["accumulate"] else 0.0)  # 48 real + 24
    if plugins == ["token-editing"]:
        assert "token_editing/share_changed" in m1
    # `collapsekit report` shows the first texts of every generation beside the plots
    code, out, _ = cli("report", str(run_dir))
    page = (run_dir / "plots" / "samples.md").read_text()
    assert code == 0 and "samples.md" in out
    assert "## generation 0" in page and "## generation 1" in page and "![metrics](metrics.png)" in page
    first = " ".join(lines[0]["text"].split())[:300]
    assert f"> {first}" in page


@pytest.mark.slow   # the default suite kills a transformers GPT-2 after a step checkpoint in test_preemption
def test_sigkill_mid_training_resumes_with_identical_metrics(cli, tmp_path, assets, sigkill_at):
    """A real SIGKILL of `collapsekit run` inside generation 1 (after a step checkpoint, before `done`);
    the same command then resumes to the numbers of an uninterrupted run."""
    import os
    import subprocess
    import sys

    args = task_args(assets, "llama")
    reference = run(cli, tmp_path, run_config(tmp_path / "runs", "ref", args, steps=40, init="previous"))
    config = run_config(tmp_path / "runs", "victim", args, steps=40, init="previous", checkpoint_every=5)
    path = tmp_path / "victim.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "collapsekit.cli", "run", "--config", str(path)]
    victim = tmp_path / "runs" / "victim"
    alive = sigkill_at(command, victim / "gen_1" / "checkpoints" / "latest.json", env)
    assert alive, "the run ended before a step checkpoint of generation 1 existed"
    assert not (victim / "gen_1" / "done").exists(), "killed too late"
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
    for g in range(2):
        assert metrics(victim, g) == metrics(reference, g)


def test_resume_after_one_generation_matches_a_fresh_run(cli, tmp_path, assets):
    args = task_args(assets, "llama")
    fresh = run(cli, tmp_path, run_config(tmp_path / "runs", "fresh", args, init="previous"))
    resumed = run(cli, tmp_path, run_config(tmp_path / "runs", "resumed", args, generations=1, init="previous"))
    run(cli, tmp_path, run_config(tmp_path / "runs", "resumed", args, generations=2, init="previous"))
    for g in range(2):
        assert metrics(fresh, g) == metrics(resumed, g)


def test_lora_saves_merged_weights_and_trains_only_adapters(cli, tmp_path, assets):
    from transformers import AutoModelForCausalLM

    args = task_args(assets, "gpt2", lora={"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]})
    task = HFCausalLM(**args)
    model = task.build_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    run_dir = run(cli, tmp_path, run_config(tmp_path / "runs", "lora", args, init="previous"))
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "gen_1" / "model")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(assets / "gpt2")
    moved = [n for n, p in merged.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert moved and all("c_attn" in n for n in moved)                 # only the adapted layers changed
    reloaded = task.load_model(run_dir / "gen_1")                       # merged weights + fresh adapters
    tokens = torch.as_tensor(np.load(run_dir / "gen_1" / "pool" / "tokens.npy")[:2])
    torch.testing.assert_close(task.token_logits(reloaded, tokens), task.token_logits(merged, tokens))


def test_npo_unlearns_tofu_style_records(cli, tmp_path, assets):
    args = task_args(assets, "gpt2", forget={"path": "json", "data_files": str(assets / "forget.jsonl")},
                     retain={"path": "json", "data_files": str(assets / "retain.jsonl")})
    config = run_config(tmp_path / "runs", "npo", args, init="previous", steps=30,
                        plugins=[{"class_path": "npo-rt", "init_args": {"steps": 3, "lr": 1e-2}}])
    config["run"]["samples_per_generation"] = 6
    config["task"]["init_args"]["lr"] = 1e-2
    run_dir = run(cli, tmp_path, config)
    m0, m1 = metrics(run_dir, 0), metrics(run_dir, 1)
    assert m1["forget_nll"] > m0["forget_nll"]
    for key in ("forget_acc", "retain_acc", "retain_nll", "npo-rt/ref_cached"):
        assert math.isfinite(m1[key])


# -- the task directly ---------------------------------------------------------------------------------------
def test_answer_mask_and_pools_follow_the_forget_contract(assets):
    args = task_args(assets, "gpt2", forget={"path": "json", "data_files": str(assets / "forget.jsonl")},
                     retain={"path": "json", "data_files": str(assets / "retain.jsonl")})
    task = HFCausalLM(**args)
    task.setup(0)
    assert "forget_data" in task.provides and task.pool_keys == ("example_id", "tokens")
    forget, retain = task.forget_pool(), task.retain_pool()
    assert len(forget) == 2 and len(retain) == 4
    batch = {k: torch.as_tensor(np.asarray(v)) for k, v in forget.arrays.items()}
    mask = task.answer_mask(batch)
    labels = batch["tokens"][:, 1:]
    answers = [task.tokenizer.decode(row[m].tolist()) for row, m in zip(labels, mask)]
    assert answers == ["Ada lives in Paris.", "Bo lives in Rome."]
    assert "forget_data" not in HFCausalLM(**task_args(assets)).provides
    # the QA rows are padded to one width; the loss is the mean cross-entropy of the non-pad labels only
    assert (labels == task.pad_id).any()
    torch.manual_seed(0)
    model = task.build_model()
    out = task.step(model, batch, frozenset())
    logp = torch.log_softmax(out["logits"].double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert float(out["loss"]) == pytest.approx(float(-logp[labels != task.pad_id].mean()), rel=1e-5)


SCRATCH = {
    "opt": {"model_type": "opt", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
            "ffn_dim": 32, "word_embed_proj_dim": 16, "max_position_embeddings": 64},
    "gpt_neox": {"model_type": "gpt_neox", "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
                 "intermediate_size": 32, "max_position_embeddings": 64},
}


@pytest.mark.parametrize("model", ["gpt2", "llama", "opt", "gpt_neox"])
def test_kv_cache_sampler_matches_full_recompute_greedy(assets, model):
    """Saved GPT-2 / Llama, and OPT / GPT-NeoX from a config dict with the BPE tokenizer given by path."""
    args = task_args(assets, model, generation={"temperature": 0})
    if model in SCRATCH:
        args.pop("model")
        args.update(config=SCRATCH[model], tokenizer=str(assets / "tokenizer"))
    task = HFCausalLM(**args)
    task.setup(0)
    assert task.logits_size == len(task.tokenizer) and task.suppress == [task.bos_id]
    torch.manual_seed(1)
    net = task.build_model().eval()
    rows = task.sample(net, 3, torch.Generator().manual_seed(0))["tokens"]
    seq = torch.full((3, 1), task.bos_id)
    with torch.no_grad():
        for _ in range(task.block_size):
            logits = net(input_ids=seq).logits[:, -1]
            logits[:, task.suppress] = float("-inf")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    np.testing.assert_array_equal(rows, seq.numpy())


def test_train_prefix_with_beams_and_repetition_penalty(assets):
    task = HFCausalLM(**task_args(assets, "llama", prompt="train_prefix", max_new_tokens=6,
                                  generation={"num_beams": 2, "repetition_penalty": 1.3}))
    task.setup(0)
    assert task.prompt_tokens == 10
    net = task.build_model()
    a = task.sample(net, 5, torch.Generator().manual_seed(3))["tokens"]
    b = task.sample(net, 5, torch.Generator().manual_seed(3))["tokens"]
    np.testing.assert_array_equal(a, b)                                  # seeded from the generator
    assert a.shape == (5, 17)
    real = {tuple(r) for r in task.train_tokens[:, :11].tolist()}
    assert all(tuple(r) in real for r in a[:, :11].tolist())
    assert not set(a[:, 11:].ravel().tolist()) & set(task.suppress)


def test_gradient_checkpointing_bfloat16_and_hidden_states(assets):
    task = HFCausalLM(**task_args(assets, "llama", gradient_checkpointing=True, torch_dtype="bfloat16"))
    task.setup(0)
    net = task.build_model()
    assert net.training and next(net.parameters()).dtype == torch.bfloat16
    assert any(getattr(m, "gradient_checkpointing", False) for m in net.modules())
    out = task.step(net, {"tokens": torch.as_tensor(task.train_tokens[:4])}, frozenset({"hidden_states", "features"}))
    out["loss"].backward()
    assert len(out["hidden_states"]) == task.n_layer + 1 and out["features"].shape == (4, 16)
    assert out["logits"].shape == (4, 16, task.logits_size) and torch.isfinite(out["loss"])


def test_repetition_and_bits_per_byte(assets):
    assert repetition(np.array([[1, 2, 3, 4, 1, 2, 3, 4]])) == pytest.approx(1 - 4 / 5)
    assert repetition(np.arange(8)[None]) == 0.0
    task = HFCausalLM(**task_args(assets))
    task.setup(0)
    net = task.build_model()
    m = task.evaluate(net, Pool.fresh({"tokens": task.heldout_tokens[:4]}, 0))
    nbytes = sum(len(t.encode("utf8")) for t in task.tokenizer.batch_decode(task.heldout_tokens[:, 1:].tolist()))
    tokens = task.heldout_tokens[:, 1:].size
    assert m["heldout_bpb"] == pytest.approx(m["heldout_nll"] * tokens / math.log(2) / nbytes, rel=1e-6)


def test_scratch_config_uses_byte_tokenizer_and_presets_build(assets):
    for name in ("smoke", "cpu", "gpu"):
        spec = HFCausalLM.preset(name)
        assert {"task", "trainer", "generations"} <= set(spec)
    task = HFCausalLM(**HFCausalLM.preset("smoke")["task"])
    assert task.vocab_size == 256 and task.bos_id == 256 and task.suppress == [256]
    task.setup(0)
    assert task.train_tokens.shape == (128, 33) and (task.train_tokens[:, 0] == 256).all()
    text = task.decode(task.train_tokens[:1])[0]
    assert text.encode("utf8") == bytes(task.train_tokens[0, 1:].astype(np.uint8))
    from_dir = HFCausalLM(config=str(assets / "gpt2"), block_size=16)   # the config dir's tokenizer
    assert not from_dir.byte_level and len(from_dir.tokenizer) == from_dir.logits_size and from_dir.lr == 1e-3
    torch.manual_seed(1)                                  # the saved model was initialised under seed 0
    fresh, pretrained = from_dir.build_model(), HFCausalLM(model=str(assets / "gpt2"), block_size=16).build_model()
    assert not torch.equal(fresh.lm_head.weight, pretrained.lm_head.weight)    # config = fresh init


# -- errors --------------------------------------------------------------------------------------------------
def test_errors_are_one_clear_message(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (dict(model="no-such-org/no-such-model-xyz"), "no-such-org/no-such-model-xyz"),
        (dict(model=str(assets / "gpt2"), config={"model_type": "gpt2"}), "exactly one of model"),
        (dict(), "got neither"),
        (dict(model=str(assets / "gpt2"), block_size=64), "exceeds the model's context of 64"),
        (dict(model=str(assets / "gpt2"), tokenizer=str(tmp_path)), "no loadable tokenizer"),
        (dict(model=str(tmp_path / "missing")), "missing': no such directory"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            HFCausalLM(**kwargs)
    empty = {"path": "json", "data_files": str(write_jsonl(tmp_path / "empty.jsonl", [{"body": "  "}]))}
    short = {"path": "json", "data_files": str(write_jsonl(tmp_path / "short.jsonl", [{"body": "In the"}]))}
    setup_cases = [
        (dict(text_key="text"), r"no column 'text' \(set text_key\); its columns are \['body'\]"),
        (dict(data=empty), "holds no text"),
        (dict(data=short, heldout=short), "less than one block of block_size=16"),
        (dict(data={"path": "wikitext", "name": "wikitext-2-raw-v1"}),
         "cannot load data .*wikitext.*: HF_HUB_OFFLINE=1 is set and it is not in the local datasets cache"),
    ]
    for extra, message in setup_cases:
        with pytest.raises(ConfigError, match=message):
            HFCausalLM(**task_args(assets, **extra)).setup(0)


def test_cli_stops_before_training_without_traceback(cli, tmp_path, assets):
    config = run_config(tmp_path / "runs", "bad", task_args(assets, text_key="content"))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = cli("run", "--config", path)
    assert code == 2 and "no column 'content'" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "bad" / "gen_0" / "done").exists()


# -- the Hub: fetched by id, one line when it cannot be --------------------------------------------------------
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_paper_config_with_an_unreachable_hub_is_one_line(tmp_path):
    """`HF_ENDPOINT` on a closed local port, as a user without network meets the paper configs: the endpoint
    is tried once, then only the cache, and the run stops with one line (the libraries alone log a retry
    warning per attempt and retry for about 40 s per file)."""
    import os
    import subprocess
    import sys

    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"))
    proc = subprocess.run([sys.executable, "-m", "collapsekit.cli", "run", "--config",
                           str(CONFIGS / "papers" / "shumailov2024.yaml"), "--run.root", str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert f"cannot load the model 'facebook/opt-125m': the Hub endpoint {endpoint} could not be reached" in err
    assert "Connection refused" in err and "hf download facebook/opt-125m" in err and "save_pretrained" in err
    assert "Retry" not in proc.stdout + proc.stderr


def test_offline_variables_give_one_line_naming_them(assets, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"cannot load the tokenizer 'no-org/tok': HF_DATASETS_OFFLINE=1 is set "
                                          r"and it is not in the local Hugging Face cache; download it once .*"
                                          r"`hf download no-org/tok`"):
        HFCausalLM(**task_args(assets, tokenizer="no-org/tok"))


def test_silent_endpoint_costs_one_timeout(assets, monkeypatch):
    """An endpoint that accepts connections and never answers: one request, cut at HF_HUB_ETAG_TIMEOUT."""
    import socket
    import time

    from huggingface_hub import constants

    from collapsekit.plugins.tasks import hub

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)                                    # the kernel accepts; nobody ever answers
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub._unreachable.cache_clear()
        started = time.time()
        with pytest.raises(ConfigError, match=r"cannot load data .*no-org/no-data.*could not be reached \(no answer "
                                              r"within 1 s \(HF_HUB_ETAG_TIMEOUT\)\) and it is not in the local "
                                              r"datasets cache"):
            HFCausalLM(**task_args(assets, data={"path": "no-org/no-data"})).setup(0)
        assert time.time() - started < 30
    hub._unreachable.cache_clear()


# -- models that must not train ---------------------------------------------------------------------------------
def test_encoder_only_model_is_refused_and_a_decoder_bert_is_not(assets, tmp_path):
    from transformers import BertConfig, BertLMHeadModel

    settings = dict(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=64)
    for name, is_decoder in (("encoder", False), ("decoder", True)):
        torch.manual_seed(0)
        BertLMHeadModel(BertConfig(is_decoder=is_decoder, **settings)).save_pretrained(tmp_path / name)
    task = HFCausalLM(**task_args(assets, model=str(tmp_path / "encoder"), tokenizer=str(assets / "tokenizer")))
    with pytest.raises(ConfigError, match=r"'.*encoder' \(BertLMHeadModel, is_decoder: false\) is not a causal "
                                          r"language model: its prediction for a position changes with the tokens "
                                          r"after it"):
        task.build_model()
    decoder = HFCausalLM(**task_args(assets, model=str(tmp_path / "decoder"), tokenizer=str(assets / "tokenizer")))
    assert decoder.build_model().training                       # causal attention: accepted
    with pytest.raises(ConfigError, match="the config .*is not a causal language model"):
        HFCausalLM(config={"model_type": "bert", **settings}, block_size=16).build_model()
    with pytest.raises(ConfigError, match=r"model_type 't5'\) is an encoder-decoder language model: transformers has "
                                          r"no AutoModelForCausalLM class"):
        HFCausalLM(config={"model_type": "t5", "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32,
                           "d_kv": 8}, block_size=16)


def test_float16_full_training_is_refused_with_the_real_cause(assets):
    with pytest.raises(ConfigError, match=r"torch_dtype float16 trains float16 weights with AdamW, whose eps \(1e-8\) "
                                          r"and small squared gradients underflow to 0 .* use torch_dtype bfloat16"):
        HFCausalLM(**task_args(assets, torch_dtype="float16"))
    # the cause as stated: one AdamW step on float16 weights with small gradients writes inf/NaN
    weight = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    weight.grad = torch.tensor([1e-5, 0.0, 1.0], dtype=torch.float16)
    torch.optim.AdamW([weight], lr=1e-3).step()
    assert not torch.isfinite(weight[:2]).any() and torch.isfinite(weight[2])
    lora = HFCausalLM(**task_args(assets, torch_dtype="float16", lora={"r": 2, "target_modules": ["c_attn"]}))
    assert lora.dtype == torch.float16                          # float16 base + float32 adapters is accepted


def test_unknown_lora_target_names_the_missing_and_the_available(assets):
    with pytest.raises(ConfigError, match=r"lora.target_modules \['q_proj', 'v_proj'\] name no layer of the model "
                                          r"'.*gpt2'; its adaptable layers are named c_attn, c_fc, c_proj, lm_head, "
                                          r"wpe, wte \(or use target_modules: all-linear\)"):
        HFCausalLM(**task_args(assets, lora={"r": 2, "target_modules": ["c_attn", "q_proj", "v_proj"]}))


# -- data files ----------------------------------------------------------------------------------------------------
DATA_FILES = {
    "empty": (b"", r"empty\.jsonl holds no records \(empty or only whitespace\)"),
    "blank": (b"  \n\n \n", r"blank\.jsonl holds no records \(empty or only whitespace\)"),
    "broken": (b'{"body": "a"}\n{"body": "b"\n', r"broken\.jsonl line 2 is not valid JSON \(Expecting ',' "
                                                  r"delimiter, column 1\)"),
    "latin1": ('{"body": "café au lait"}\n'.encode("latin-1"), r"latin1\.jsonl is not UTF-8 text \(byte 0xe9 on "
                                                                r"line 1\); re-encode it as UTF-8"),
    "missing": (None, r"missing\.jsonl does not exist"),
}


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_bad_data_file_is_named_in_one_line(assets, tmp_path, name):
    content, message = DATA_FILES[name]
    path = tmp_path / f"{name}.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^hf-lm: data.*: .*" + message) as raised:
        HFCausalLM(**task_args(assets, data={"path": "json", "data_files": str(path)})).setup(0)
    assert "\n" not in str(raised.value) and "download" not in str(raised.value)


def test_corpus_edited_in_place_is_detected_on_resume(cli, tmp_path, assets):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes((assets / "corpus.jsonl").read_bytes())
    args = task_args(assets, data={"path": "json", "data_files": str(corpus)})
    run_dir = run(cli, tmp_path, run_config(tmp_path / "runs", "edited", args, generations=1))
    recorded = json.loads((run_dir / "data.json").read_text())
    assert set(recorded["arrays"]) == {"tokens", "heldout_tokens"}
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines[:-1] + [lines[-1].replace("the", "a")]) + "\n")     # the last document edited
    config = run_config(tmp_path / "runs", "edited", args, generations=2)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _, err = cli("run", "--config", path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"the real data of task 'hf-lm' differ from those run {run_dir} started with" in err
    assert "a data file changed since" in err and not (run_dir / "gen_1").exists()


def test_disk_full_while_saving_the_model_is_one_line(cli, tmp_path, assets, file_size_limit):
    config = run_config(tmp_path / "runs", "full", task_args(assets), generations=1)
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(config))
    with file_size_limit(20_000):                   # the tiny GPT-2's safetensors file is larger
        code, _, err = cli("run", "--config", path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "could not write" in err and "gen_0: File too large" in err and "re-run the same command" in err
    assert not (tmp_path / "runs" / "full" / "gen_0" / "done").exists()


def test_bench_smoke_preset_runs(tmp_path):
    from collapsekit.bench.runner import plan, run_bench

    cells, _ = plan("smoke", tasks=["hf-lm"], progress=False)
    assert {c["method"] for c in cells} == set(HFCausalLM.bench_methods)
    results = run_bench("smoke", tasks=["hf-lm"], methods=["baseline"], seeds=[0], out=tmp_path, progress=False,
                        fail_fast=True, overrides={"hf-lm": {"trainer": {"max_steps": 3}}})
    rows = [r for r in results["rows"] if r["metric"] == "heldout_ppl"]
    assert len(rows) == 2 and all(math.isfinite(r["value"]) for r in rows)
