"""Loading of the retriever kinds beyond bi- and cross-encoders: how each is recognised in a saved
folder and which transformers class reads its weights (always ``trust_remote_code=False``)."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

from rankscope.tools.retrievers.base import Retriever

EXTRA_KINDS = ("splade", "late-interaction", "mono-t5", "qwen3-reranker", "rankllama")
"""Kinds loaded here; ``load_retriever(kind=...)`` accepts them as well."""


def _module_types(path: Path) -> list[str]:
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return []
    return [str(m.get("type", "")) for m in json.loads(modules_file.read_text())]


def detect_kind(path: Path, config: Any) -> str | None:
    """The extra kind a saved folder holds, from its files and config; None when it holds none
    (then the bi-/cross-encoder rules apply). SPLADE folders written by transformers alone look
    like any masked-LM checkpoint: pass ``kind="splade"`` for those."""
    types = _module_types(path)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(t.endswith("SpladePooling") for t in types):
        return "splade"
    if any(t.startswith("pylate.") for t in types) or "HF_ColBERT" in architectures:
        return "late-interaction"
    if "T5ForConditionalGeneration" in architectures:
        return "mono-t5"
    if any(a.endswith("ForCausalLM") for a in architectures):
        return "qwen3-reranker"
    if getattr(config, "model_type", None) in ("llama", "qwen2", "qwen3", "mistral") and any(
        a.endswith("ForSequenceClassification") for a in architectures
    ):
        return "rankllama"
    return None


def load_extra_kind(
    kind: str,
    path: Path,
    config: Any,
    model_id: str,
    max_length: int,
    device: str,
    allow_random_weights: bool = False,
    label: str | None = None,
) -> Retriever:
    """A retriever of one of ``EXTRA_KINDS`` from a resolved local folder. As for bi- and
    cross-encoders, weights the score depends on that the checkpoint lacks are an error unless
    ``allow_random_weights`` (the retriever's ``random_weights`` then lists them), and a
    RankLLaMA-style head with several labels needs ``label``."""
    from transformers import AutoTokenizer

    from rankscope.tools.retrievers.loading import (
        RetrieverLoadError,
        _check_label,
        _untrained_weights,
        random_weights_error,
        unsafe_weights_error,
    )

    if kind not in EXTRA_KINDS:
        raise RetrieverLoadError(f"unknown retriever kind {kind!r}")
    if kind == "rankllama":
        _check_label(config, model_id, label)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise RetrieverLoadError(
            f"could not load the tokenizer of {model_id!r} from {path}: {err}"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise RetrieverLoadError(
            f"the tokenizer of {model_id!r} is not a fast tokenizer; RankScope needs offsets "
            "(tokenizer.json) to mark token roles"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net, info = _load_model(kind, path)
        except pickle.UnpicklingError as err:
            raise unsafe_weights_error(err, model_id, path) from err
        except (OSError, ValueError, RuntimeError) as err:
            raise RetrieverLoadError(
                f"could not load the weights of {model_id!r} as a {kind} model: {err}"
            ) from err
    untrained = _untrained_weights(info, kind)
    if untrained and not allow_random_weights:
        raise random_weights_error(model_id, untrained)
    retriever = _build(kind, net, tokenizer, path, config, model_id, max_length, device)
    retriever.random_weights = tuple(untrained)
    return retriever


def _build(
    kind: str,
    net: Any,
    tokenizer: Any,
    path: Path,
    config: Any,
    model_id: str,
    max_length: int,
    device: str,
) -> Retriever:
    """The adapter of ``kind`` around loaded weights."""
    from rankscope.tools.retrievers.architectures import weights_fingerprint
    from rankscope.tools.retrievers.loading import RetrieverLoadError, _weights_hash

    weights = _weights_hash(path) or weights_fingerprint(net)
    common: dict[str, Any] = {
        "model_id": model_id,
        "weights_hash": weights,
        "max_length": max_length,
        "device": device,
    }
    if kind == "splade":
        from rankscope.tools.retrievers.architectures import arch_for
        from rankscope.tools.retrievers.splade import Splade

        return Splade(net, tokenizer, arch_for(config.model_type), **common)
    if kind == "late-interaction":
        from rankscope.tools.retrievers.architectures import arch_for
        from rankscope.tools.retrievers.late_interaction import (
            LateInteraction,
            LateInteractionSettings,
            load_projection,
        )

        try:
            projection = load_projection(path)
        except (OSError, ValueError, KeyError, StopIteration) as err:
            raise RetrieverLoadError(f"{model_id!r}: {err}") from err
        return LateInteraction(
            net,
            tokenizer,
            arch_for(config.model_type),
            projection=projection,
            settings=LateInteractionSettings.from_folder(path),
            **common,
        )
    if kind == "mono-t5":
        from rankscope.tools.retrievers.mono_t5 import T5_ARCH, MonoT5

        if config.model_type not in ("t5", "mt5"):
            raise RetrieverLoadError(
                f"{model_id!r} is a {config.model_type!r} model; monoT5 needs a T5 checkpoint"
            )
        try:
            return MonoT5(net, tokenizer, T5_ARCH, **common)
        except ValueError as err:
            raise RetrieverLoadError(f"{model_id!r}: {err}") from err
    from rankscope.tools.retrievers.decoder_reranker import Qwen3Reranker, RankLlama, decoder_arch

    try:
        arch = decoder_arch(config.model_type)
        cls = Qwen3Reranker if kind == "qwen3-reranker" else RankLlama
        return cls(net, tokenizer, arch, **common)
    except ValueError as err:
        raise RetrieverLoadError(f"{model_id!r}: {err}") from err


def _load_model(kind: str, path: Path) -> tuple[Any, dict[str, Any]]:
    """The model of ``kind`` and transformers' loading info (missing and mismatched keys)."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    loaders: dict[str, Any] = {
        "splade": AutoModelForMaskedLM,
        "late-interaction": AutoModel,
        "mono-t5": AutoModelForSeq2SeqLM,
        "qwen3-reranker": AutoModelForCausalLM,
        "rankllama": AutoModelForSequenceClassification,
    }
    if kind not in loaders:
        raise ValueError(f"no loader for kind {kind!r}")
    net, info = loaders[kind].from_pretrained(
        path, attn_implementation="eager", trust_remote_code=False, output_loading_info=True
    )
    return net, info
