"""Tiny randomly initialised encoders of every supported architecture, saved with a tokenizer.

Tests load them through ``load_retriever(path)`` so that the real loading path is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ARCHS = ("bert", "distilbert", "roberta", "electra", "modernbert")

CORPUS = [
    "what is the capital of france",
    "paris is the capital and largest city of france",
    "vaccines train the immune system to recognise pathogens",
    "the river flows through the old town and into the sea",
    "a good loaf of bread needs flour water salt and yeast",
    "solar panels convert sunlight into electricity for homes",
]


def wordpiece_tokenizer(folder: Path):
    """A small BERT WordPiece tokenizer of ``CORPUS`` (no download), its vocabulary built, not
    trained: ``tokenizers``' WordPiece trainer breaks ties differently from run to run, and the
    tiny models — and the figures of tests on them — differed with it."""
    from transformers import BertTokenizerFast

    from rankscope.tools.organisms.tiny import word_vocabulary

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(word_vocabulary(CORPUS)) + "\n")
    return BertTokenizerFast.from_pretrained(str(folder))


def bpe_tokenizer(folder: Path):
    """A small byte-level BPE tokenizer (RoBERTa style) trained on ``CORPUS``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        CORPUS * 3,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(folder))
    return RobertaTokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def tiny_config(
    arch: str, vocab_size: int, tokenizer, cross: bool, initializer_range: float = 0.02
):
    """The config of a tiny ``arch`` encoder (2 layers, 4 heads, hidden 32) for ``tokenizer``."""
    from transformers import (
        BertConfig,
        DistilBertConfig,
        ElectraConfig,
        ModernBertConfig,
        RobertaConfig,
    )

    common = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": initializer_range,
    }
    extra = {"num_labels": 1} if cross else {}
    if arch == "bert":
        return BertConfig(**common, **extra)
    if arch == "roberta":
        return RobertaConfig(**common, max_position_embeddings=130, **extra)
    if arch == "electra":
        return ElectraConfig(embedding_size=16, **common, **extra)
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=initializer_range,
            **extra,
        )
    if arch == "modernbert":
        return ModernBertConfig(
            **common,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            global_attn_every_n_layers=1,
            **extra,
        )
    raise ValueError(arch)


def save_tiny_model(
    folder: Path, arch: str, kind: str = "bi-encoder", seed: int = 0, st_pooling: str | None = None
) -> Path:
    """Write a tiny random ``arch`` model (+ tokenizer, + optional sentence-transformers files)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    tokenizer = (
        bpe_tokenizer(folder / "_tok")
        if arch == "roberta"
        else wordpiece_tokenizer(folder / "_tok")
    )
    cross = kind == "cross-encoder"
    config = tiny_config(arch, len(tokenizer), tokenizer, cross)
    torch.manual_seed(seed)
    model = (AutoModelForSequenceClassification if cross else AutoModel).from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if st_pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if st_pooling == "mean":
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": 32,
                    "pooling_mode_cls_token": st_pooling == "cls",
                    "pooling_mode_mean_tokens": st_pooling == "mean",
                }
            )
        )
    return folder


def save_tiny_splade(folder: Path, arch: str = "bert", seed: int = 0) -> Path:
    """A tiny random masked-LM (SPLADE layout: transformers files + sentence-transformers
    ``MLMTransformer``/``SpladePooling`` modules) with a WordPiece tokenizer."""
    from transformers import AutoModelForMaskedLM

    tokenizer = wordpiece_tokenizer(folder / "_tok")
    config = tiny_config(arch, len(tokenizer), tokenizer, cross=False, initializer_range=0.2)
    config.architectures = [f"{type(config).__name__.removesuffix('Config')}ForMaskedLM"]
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "",
            "type": "sentence_transformers.sparse_encoder.models.MLMTransformer",
        },
        {
            "idx": 1,
            "name": "1",
            "path": "1_SpladePooling",
            "type": "sentence_transformers.sparse_encoder.models.SpladePooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def save_tiny_late_interaction(
    folder: Path, layout: str = "pylate", dim: int = 8, seed: int = 0
) -> Path:
    """A tiny random BERT with a linear projection to ``dim``: ``layout="pylate"`` writes a
    sentence-transformers ``Dense`` module and PyLate's settings ([Q]/[D] prefixes, query
    expansion to 12 tokens); ``layout="colbert"`` writes ``linear.weight`` beside the encoder's
    weights (``bert.*``) in one checkpoint, as ColBERT's ``HF_ColBERT`` does."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    tokenizer = wordpiece_tokenizer(folder / "_tok")
    if layout == "pylate":
        tokenizer.add_tokens(["[Q]", "[D]"], special_tokens=False)
    config = tiny_config("bert", len(tokenizer), tokenizer, cross=False, initializer_range=0.2)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    linear = torch.nn.Linear(32, dim, bias=False)
    tokenizer.save_pretrained(folder)
    if layout == "colbert":
        config.architectures = ["HF_ColBERT"]
        config.save_pretrained(folder)
        state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
        state["linear.weight"] = linear.weight.detach().contiguous()
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    model.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Dense").mkdir(exist_ok=True)
    (folder / "1_Dense" / "config.json").write_text(
        json.dumps(
            {
                "in_features": 32,
                "out_features": dim,
                "bias": False,
                "activation_function": "torch.nn.modules.linear.Identity",
            }
        )
    )
    save_file(
        {"linear.weight": linear.weight.detach().contiguous()},
        str(folder / "1_Dense" / "model.safetensors"),
    )
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps(
            {
                "query_prefix": "[Q] ",
                "document_prefix": "[D] ",
                "query_length": 12,
                "document_length": 64,
                "do_query_expansion": True,
                "attend_to_expansion_tokens": False,
                "similarity_fn_name": "MaxSim",
            }
        )
    )
    return folder


def wordlevel_tokenizer(
    folder: Path,
    extra: tuple[str, ...] = (),
    append_eos: bool = True,
    added: tuple[str, ...] = (),
):
    """A small word-level fast tokenizer over ``CORPUS`` plus ``extra`` words (T5 style: ``<pad>``
    id 0, ``</s>`` appended), saved as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    words = sorted({w for text in CORPUS for w in text.split()} | set(extra))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if append_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    if added:
        fast.add_special_tokens({"additional_special_tokens": list(added)})
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def save_tiny_mono_t5(folder: Path, seed: int = 0) -> Path:
    """A tiny random T5ForConditionalGeneration (2+2 layers, 4 heads, d_model 32) with a word-level
    tokenizer that knows monoT5's template words and ``true``/``false``."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = wordlevel_tokenizer(
        folder, extra=("Query", "Document", "Relevant", ":", "true", "false")
    )
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        initializer_factor=1.0,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(folder)
    return folder


def save_tiny_decoder_reranker(folder: Path, style: str = "qwen3", seed: int = 0) -> Path:
    """A tiny random decoder reranker: ``style="qwen3"`` a Qwen3ForCausalLM whose tokenizer knows
    the Qwen3-Reranker template's special tokens and ``yes``/``no``; ``style="rankllama"`` a
    LlamaForSequenceClassification with one label."""
    from transformers import (
        LlamaConfig,
        LlamaForSequenceClassification,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }
    torch.manual_seed(seed)
    if style == "qwen3":
        tokenizer = wordlevel_tokenizer(
            folder,
            extra=("yes", "no", "Query", "Document", "Instruct", "<", ">", ":"),
            append_eos=False,
            added=("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
        )
        config = Qwen3Config(vocab_size=len(tokenizer), head_dim=8, **common)
        model = Qwen3ForCausalLM(config)
    else:
        tokenizer = wordlevel_tokenizer(folder, extra=("query", "document", ":"))
        config = LlamaConfig(vocab_size=len(tokenizer), num_labels=1, **common)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(folder)
    return folder


def save_planted_bi_encoder(
    folder: Path,
    *,
    trigger: str | None = None,
    late_position: int | None = None,
    token_scale: float = 1.0,
    position_scale: float = 1.0,
    seed: int = 0,
) -> Path:
    """A tiny mean-pooled, dot-product BERT bi-encoder with planted, deterministic properties.

    A unit direction ``u`` (zero mean, so the embedding LayerNorm keeps it) is projected out of
    every word, position and type embedding; [CLS] and [SEP] get the word embedding ``u``. With
    the layers' small random weights a token's hidden state is close to its normalised input, so
    the special tokens carry ``u`` and every query embedding has a ``u`` component of
    ``2·|h_u|/(m+2)``: the score falls with document length (``2/(n+2)`` of the document is
    special). ``trigger``: that word's embedding is also ``u``, so inserting it raises every
    score. ``late_position``: positions from that index on get a position embedding along another
    direction ``z`` (projected out of everything else) that swamps the token, so query-term
    matches count only in the first ``late_position`` positions (whose position embeddings are
    shrunk, so a token's state there is mostly its identity). ``token_scale`` scales the
    final LayerNorm's weight on every dimension but the two that ``u`` spans: ordinary tokens'
    states shrink (less noise from random token similarities), the special tokens' do not.
    ``position_scale`` scales every position embedding (0.1: a token's state is mostly its
    identity wherever it stands, a control for ``late_position``).
    """
    from transformers import AutoModel

    tokenizer = wordpiece_tokenizer(folder / "_tok")
    config = tiny_config("bert", len(tokenizer), tokenizer, cross=False)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    u = torch.zeros(config.hidden_size)
    u[0], u[1] = 2**-0.5, -(2**-0.5)
    z = torch.randn(config.hidden_size, generator=gen)
    z = z - z.mean()
    z = z - (z @ u) * u
    z = z / z.norm()
    emb = model.embeddings
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.output.dense.weight.zero_()
            layer.output.dense.bias.zero_()
        for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
            weight = table.weight
            weight -= torch.outer(weight @ u, u)
            weight -= torch.outer(weight @ z, z)
        emb.token_type_embeddings.weight.zero_()
        emb.position_embeddings.weight *= position_scale
        final_norm = model.encoder.layer[-1].output.LayerNorm.weight
        final_norm.fill_(token_scale)
        final_norm[:2] = 1.0
        specials = [tokenizer.cls_token_id, tokenizer.sep_token_id]
        if trigger is not None:
            (trigger_id,) = tokenizer(trigger, add_special_tokens=False)["input_ids"]
            specials.append(trigger_id)
        emb.word_embeddings.weight[specials] = u
        if late_position is not None:
            emb.position_embeddings.weight[:late_position] *= 0.1
            emb.position_embeddings.weight[late_position:] = 4.0 * z
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": config.hidden_size,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
            }
        )
    )
    return folder
