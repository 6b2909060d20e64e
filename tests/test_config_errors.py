"""A config the parser refuses is one line naming the key at fault and what it accepts (no Union dump)."""
import pytest

from collapsekit.config_errors import type_text

CASES = {
    "task argument typo": (
        ["--task.init_args.seqlen", "8"],
        "invalid config: unknown key task.init_args.seqlen (did you mean seq_len?); MarkovText accepts vocab_size, "
        "seq_len,"),
    "task argument of the wrong type": (
        ["--task.init_args.seq_len", "long"], "invalid config: task.init_args.seq_len must be int, got 'long'."),
    "task class typo": (
        ["--task.class_path", "MarkovTxt"],
        "invalid config: task.class_path 'MarkovTxt' is not a task class (did you mean MarkovText?); the installed "
        "tasks are BibleLM (bible-lm),"),
    "task name instead of its class": (
        ["--task.class_path", "markov-text"],
        "invalid config: task.class_path 'markov-text' is not a task class (the class of task 'markov-text' is "
        "MarkovText);"),
    "module path typo": (
        ["--task.class_path", "collapsekit.plugins.tasks.markov_text.MarkovTxt"],
        "invalid config: task.class_path 'collapsekit.plugins.tasks.markov_text.MarkovTxt' is not a task class "
        "(did you mean MarkovText?)"),
    "class's own check": (
        ["--task.class_path", "ImageDiffusion", "--task.init_args.sampler", "euler"],
        "invalid config value: image-diffusion: unknown sampler 'euler'; choose from ddpm, ddim"),
    "run literal": (
        ["--run.init", "prev"], "invalid config: run.init must be one of 'scratch', 'previous', 'base', got 'prev'."),
    "optional run value": (
        ["--run.checkpoint_every", "often"], "invalid config: run.checkpoint_every must be int or null, got 'often'."),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_config_is_one_line_naming_the_key(cli, make_config, write_config, case):
    argv, expected = CASES[case]
    code, _, err = cli("run", "--config", write_config(make_config()), *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("collapsekit: error: " + expected), err
    assert "Union" not in err and "Traceback" not in err and "Namespace" not in err


def test_type_text_reads_like_the_annotation():
    from typing import Any, Literal, Optional, Union

    assert type_text(int) == "int"
    assert type_text(Optional[int]) == "int or null"
    assert type_text(Literal["a", "b"]) == "one of 'a', 'b'"
    assert type_text(Union[dict[str, Any], float]) == "dict[str, Any] or float"
