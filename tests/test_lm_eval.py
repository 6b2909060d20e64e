"""The lm-eval plugin: lm-evaluation-harness on each generation's hf-lm model, in memory and offline, on a
local multiple-choice task (8 KJV verse completions, tests/data/kjv_mc.jsonl); the accuracy it writes
is checked against an independent log-likelihood computation with the saved model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from collapsekit.plugins.lm_eval import LMEval, harness_metrics
from collapsekit.testing import PluginConformance

DATA = Path(__file__).parent / "data" / "kjv_mc.jsonl"
TASK = "kjv_mc"
TINY_LM = {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64},
           "block_size": 32, "max_blocks": 64, "max_heldout_blocks": 16, "batch_size": 16}


def write_task(folder: Path) -> Path:
    """An lm-eval multiple-choice task YAML reading ``DATA`` (absolute path: lm-eval resolves data files
    from the working directory)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump({
        "task": TASK, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(DATA)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return folder


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("lm_eval_tasks"))


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def independent_loglikelihoods(model: torch.nn.Module, tok) -> list[list[float]]:
    """Per question, per choice: the summed log-probability of the choice's tokens after
    ``[BOS] question " "`` under ``model``, by a plain forward pass."""
    out = []
    for line in DATA.read_text().splitlines():
        doc = json.loads(line)
        context = [tok.bos_token_id] + tok(doc["question"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = [tok.bos_token_id] + tok(doc["question"] + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
            scores.append(sum(float(logp[p, whole[p + 1]]) for p in range(len(context) - 1, len(whole) - 1)))
        out.append(scores)
    return out


def independent_accuracy(model_dir: Path) -> float:
    """Multiple-choice accuracy of the saved model: the choice of highest log-likelihood against the answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores = independent_loglikelihoods(model, AutoTokenizer.from_pretrained(model_dir))
    answers = [json.loads(line)["answer"] for line in DATA.read_text().splitlines()]
    return float(np.mean([int(np.argmax(s)) == a for s, a in zip(scores, answers)]))


def run_config(root: Path, task_dir: Path, plugin_args: dict | None = None, task: dict | None = None) -> dict:
    plugin = {"class_path": "lm-eval", "init_args": {"tasks": [TASK], "include_path": str(task_dir),
                                                     **(plugin_args or {})}}
    return {"run": {"name": "lm", "root": str(root), "generations": 2, "seed": 0, "plugins": [plugin],
                    "samples_per_generation": 16},
            "task": task or {"class_path": "collapsekit.plugins.tasks.hf_lm.HFCausalLM", "init_args": TINY_LM},
            "trainer": {"max_steps": 4, "accelerator": "cpu", "enable_progress_bar": False, "logger": False}}


def test_hf_lm_run_writes_lm_eval_accuracy_for_every_generation(cli, write_config, tmp_path, task_dir, offline):
    code, out, err = cli("run", "--config", write_config(run_config(tmp_path / "runs", task_dir)))
    assert code == 0, err
    for g in range(2):
        gen = tmp_path / "runs" / "lm" / f"gen_{g}"
        metrics = json.loads((gen / "metrics.json").read_text())
        assert metrics[f"lm_eval/{TASK}/acc"] == pytest.approx(independent_accuracy(gen / "model"), abs=1e-12)
        assert f"lm_eval/{TASK}/acc_stderr" in metrics
        assert 0 < metrics["self_bleu"] < 1 and 0 < metrics["type_token_ratio"] <= 1   # text probes of hf-lm
    assert "plots/evaluation.png" in out and (tmp_path / "runs" / "lm" / "plots" / "evaluation.png").is_file()


@pytest.mark.parametrize("which", ["hf-lm", "bible-lm"])
def test_in_memory_model_gets_the_plain_log_likelihoods(task_dir, offline, which):
    """Every request lm-eval scores equals the plain forward pass of the same model in memory: for hf-lm and
    for a built-in language task (bible-lm, its byte-level tokenizer), which share the transformers path."""
    from collapsekit.plugins.tasks.bible_lm import BibleLM
    from collapsekit.plugins.tasks.hf_lm import HFCausalLM

    task = HFCausalLM(**TINY_LM) if which == "hf-lm" else BibleLM(seq_len=64, n_layer=1, n_embd=16)
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():                                      # move it off its initialisation
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    out = LMEval(tasks=[TASK], include_path=str(task_dir), evaluate_args={"log_samples": True}).harness(task, model)
    by_doc = {s["doc_id"]: [ll for ll, _ in s["filtered_resps"]] for s in out["samples"][TASK]}  # (ll, greedy)
    expected = independent_loglikelihoods(model, task.tokenizer)
    assert np.allclose([by_doc[i] for i in range(len(expected))], expected, rtol=1e-5, atol=1e-5)
    assert len({round(x, 3) for row in expected for x in row}) == 16        # 16 distinct scores: not a trivial case



def test_a_word_the_task_tokenizer_does_not_know_is_one_message(task_dir, offline):
    """markov-text's tokenizer knows only its own words ("0" .. "63"): the English KJV task is refused with one
    line naming the words it knows, not the tokenizers library's "Missing [UNK] token"."""
    from collapsekit.errors import ConfigError
    from collapsekit.plugins.tasks.markov_text import MarkovText

    task = MarkovText(n_layer=1, n_embd=16)
    with pytest.raises(ConfigError, match=r"task 'markov-text''s tokenizer does not know: it knows only the task's "
                                          r"own 64 words \(0 1 2 3 4 5 6 7 \.\.\.\); write the lm-eval task"):
        LMEval(tasks=[TASK], include_path=str(task_dir)).harness(task, task.build_model())

def test_a_task_that_is_not_a_transformers_lm_stops_before_training(cli, write_config, tmp_path, task_dir):
    task = {"class_path": "collapsekit.plugins.tasks.gaussian.Gaussian", "init_args": {"dim": 2}}  # no LM
    code, _, err = cli("run", "--config", write_config(run_config(tmp_path / "runs", task_dir, task=task)))
    assert code == 2 and "Traceback" not in err
    assert "lm-eval needs the task capability TransformersLM" in err and "gaussian" in err
    assert not (tmp_path / "runs" / "lm" / "gen_0").exists()


def test_missing_harness_and_unknown_tasks_are_one_message(tmp_path, monkeypatch, task_dir):
    from collapsekit.errors import ConfigError, PluginError
    from collapsekit.plugins.tasks.hf_lm import HFCausalLM

    run = type("R", (), {"task": HFCausalLM(**TINY_LM)})()
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)        # as if lm-eval were not installed
    with pytest.raises(PluginError, match=r"pip install 'collapsekit\[lm-eval\]'"):
        LMEval(tasks=[TASK], include_path=str(task_dir)).configure(run)
    monkeypatch.undo()

    class Index:                                               # lm-eval's TaskManager, without its 15 s index
        def __init__(self, include_path=None, include_defaults=True):
            self.all_tasks = [TASK] + (["hellaswag", "arc_easy"] if include_defaults else [])

    assert LMEval(tasks=[TASK], include_path=str(task_dir))._task_manager(Index).all_tasks == [TASK]
    with pytest.raises(ConfigError, match=r"unknown lm-eval task 'helaswag' \(did you mean hellaswag\?\)"):
        LMEval(tasks=["helaswag"], include_path=str(task_dir))._task_manager(Index)
    with pytest.raises(ConfigError, match="non-empty list"):
        LMEval(tasks="hellaswag")


def test_task_data_that_cannot_be_had_offline_is_one_message(tmp_path, offline):
    """A task whose data is a Hub dataset id, with HF_HUB_OFFLINE set and nothing cached: one ConfigError
    at configure that says the Hub was not asked and why, and how to give the data locally."""
    from collapsekit.errors import ConfigError
    from collapsekit.plugins.tasks.hf_lm import HFCausalLM

    folder = write_task(tmp_path / "tasks")
    spec = yaml.safe_load((folder / f"{TASK}.yaml").read_text())
    spec.update(dataset_path="collapsekit-tests/no-such-dataset", dataset_kwargs={})
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(spec))
    run = type("R", (), {"task": HFCausalLM(**TINY_LM)})()
    with pytest.raises(ConfigError, match=r"from the local caches only \(HF_HUB_OFFLINE=1 is set\).*"
                                          r"dataset_path: json"):
        LMEval(tasks=[TASK], include_path=str(folder)).configure(run)


def test_report_draws_the_evaluation_with_stderr_bars():
    from collapsekit.bench.report import evaluation_metrics, stderr_of

    names = ["kl", "self_bleu", "type_token_ratio", "lm_eval/a/acc", "lm_eval/a/acc_stderr",
             "lm_eval/b/exact_match/strict", "lm_eval/b/exact_match_stderr/strict"]
    assert evaluation_metrics(names) == ["self_bleu", "type_token_ratio", "lm_eval/a/acc", "lm_eval/b/exact_match/strict"]
    assert stderr_of("lm_eval/b/exact_match/strict") == "lm_eval/b/exact_match_stderr/strict"


def test_results_become_flat_finite_metrics():
    results = {"kjv_mc": {"alias": "kjv_mc", "acc,none": 0.5, "acc_stderr,none": "N/A",
                          "exact_match,strict-match": 1, "f1,none": float("nan")}}
    assert harness_metrics(results) == {"lm_eval/kjv_mc/acc": 0.5, "lm_eval/kjv_mc/exact_match/strict-match": 1.0}


class TestLMEvalConformance(PluginConformance):
    """The kit's checks (hooks, pickling, a real run, determinism) on a one-generation tiny hf-lm run."""

    plugin_factory = staticmethod(lambda **args: LMEval(tasks=[TASK], include_path=str(_kit_task_dir()), **args))
    plugin_args = {"batch_size": 4}
    generations = 1
    max_steps = 2

    def task_factory(self):
        from collapsekit.plugins.tasks.hf_lm import HFCausalLM

        return HFCausalLM(**TINY_LM)


def _kit_task_dir() -> Path:
    """One task folder per test process for the conformance kit's plugin factory."""
    import tempfile

    global _KIT_DIR
    if _KIT_DIR is None:
        _KIT_DIR = write_task(Path(tempfile.mkdtemp(prefix="collapsekit-lm-eval-")))
    return _KIT_DIR


_KIT_DIR: Path | None = None

