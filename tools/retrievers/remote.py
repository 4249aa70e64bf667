"""Large models through nnsight remote execution (NDIF, or nnsight's local simulation of it).

A remote retriever holds no weights. Its model is an nnsight ``HuggingFaceModel`` built from a
Hugging Face id on the meta device; every forward pass — scoring, query embeddings, the reads and
edits of the nnsight patching engine — is a ``trace(remote=...)`` that the backend runs on its
copy of the checkpoint, and only the saved tensors come back. Tokenisation and the readout run
here, so remote execution covers kinds whose readout needs no weights (bi-encoders: pooling and a
similarity with the query embedding). Experiments that run the model with torch hooks or replay
its layers (the cached patching engine, ablation, path patching …) need the weights here and are
refused with a message that says so.

``remote`` is ``True`` (the NDIF host in nnsight's config, ``NDIF_HOST`` to override), a host URL,
or ``"local"``: nnsight serialises the trace as for a server, hides the modules a server lacks
while deserialising it, and runs it here (used by the tests; it needs the weights in the local
Hugging Face cache). The API key comes from ``NDIF_API_KEY`` or nnsight's own config
(``nnsight login``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

from rankscope.tools.retrievers.architectures import ArchSpec, arch_for, model_dims, submodule
from rankscope.tools.retrievers.bi_encoder import BiEncoder, Pooling, Similarity
from rankscope.tools.retrievers.loading import (
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    RetrieverLoadError,
    sentence_transformers_settings,
)

Remote = bool | str
"""``True`` (NDIF), a backend URL, or ``"local"`` (nnsight's local simulation)."""

SMALL_FILES = ("*.json", "*.txt", "*.model", "tokenizer*", "*/config.json")
"""The files the adapter reads here: config, tokenizer, sentence-transformers settings."""


class RemoteExecutionError(RetrieverLoadError):
    """Remote execution cannot run: the message says why and what to do."""


def parse_remote(value: str | None) -> Remote | None:
    """The ``--remote`` option: ``ndif`` (or ``true``) for the configured NDIF host, ``local`` for
    nnsight's local simulation, or a backend URL; empty or ``None`` for no remote execution."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.lower() in ("ndif", "true", "1", "yes"):
        return True
    if text.lower() == "local":
        return "local"
    if text.startswith(("http://", "https://")):
        return text
    raise ValueError(
        f"--remote {value!r}: use 'ndif' (the NDIF host in nnsight's config), 'local' (nnsight's "
        "local simulation of a backend) or a backend URL (https://…)"
    )


def backend_host(remote: Remote) -> str:
    """Where traces go, in words for messages and provenance."""
    if remote == "local":
        return "local (nnsight's local simulation)"
    if isinstance(remote, str):
        return remote
    from nnsight import CONFIG

    return str(CONFIG.API.HOST)


def api_key() -> str | None:
    """The NDIF API key: ``NDIF_API_KEY``, else nnsight's config (``nnsight login``)."""
    key = os.environ.get("NDIF_API_KEY")
    if key:
        return key
    from nnsight import CONFIG

    return CONFIG.API.APIKEY or None


def needs_network(remote: Remote, reason: str) -> RemoteExecutionError:
    """The error for a remote run that cannot reach the Hub or the backend."""
    return RemoteExecutionError(
        "remote execution needs a Hugging Face model id and network access to the backend at "
        f"{backend_host(remote)}; set NDIF_API_KEY (or run `nnsight login`). {reason}"
    )


class RemoteModel:
    """Marker base for nnsight wrappers whose traces default to a remote backend (see
    :func:`remote_model`)."""

    remote: Remote


def remote_model(repo_id: str, remote: Remote) -> Any:
    """An nnsight ``HuggingFaceModel`` of ``repo_id`` (meta weights) whose traces run on
    ``remote``; its model key names nnsight's own class, which a server can import."""
    from nnsight.modeling.huggingface import HuggingFaceModel  # type: ignore[import-untyped]

    class _Remote(HuggingFaceModel, RemoteModel):
        def trace(self, *inputs: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("remote", self.remote)
            return super().trace(*inputs, **kwargs)

        def _remoteable_class(self) -> type:
            return HuggingFaceModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nnsight already serves.*")
        wrapper = _Remote(repo_id)
    wrapper.remote = remote
    return wrapper


class RemoteBiEncoder(BiEncoder):
    """A bi-encoder whose encoder runs on a remote nnsight backend (see the module docstring)."""

    def __init__(
        self,
        wrapper: Any,
        tokenizer: Any,
        arch: ArchSpec,
        model_id: str,
        weights_hash: str,
        remote: Remote,
        pooling: Pooling = "mean",
        similarity: Similarity = "cosine",
        max_length: int = 256,
    ) -> None:
        self._wrapper = wrapper
        self.remote = remote
        self.model = wrapper._module
        self.tokenizer = tokenizer
        self.arch = arch
        self.model_id = model_id
        self.weights_hash = weights_hash
        self.max_length = max_length
        self.device = "cpu"
        self.n_layers, self.n_heads, self.hidden_size = model_dims(self.model.config)
        self.head_dim = self.hidden_size // self.n_heads
        self.pooling = pooling
        self.similarity = similarity

    @property
    def nn(self) -> Any:
        """The nnsight wrapper; its traces run on the remote backend."""
        return self._wrapper

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "remote": backend_host(self.remote)}

    def _hidden(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's last hidden state, computed by the backend."""
        with self.nn.trace(**inputs):
            hidden = self.nn.output[0].save()
        return hidden

    def forward_hidden(self, batch: Any) -> torch.Tensor:
        return self._hidden(batch.inputs)

    def component_module(
        self, layer: int, site: Any
    ) -> tuple[torch.nn.Module, Literal["input", "output"]]:
        raise RemoteExecutionError(
            "this experiment runs the model here with torch hooks, but a remote retriever has no "
            f"weights here (its traces run at {backend_host(self.remote)}); with --remote use "
            "activation_patching with engine='nnsight' (the default there), or drop --remote"
        )

    def after_layers(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.arch.final_norm is None:
            return hidden
        raise RemoteExecutionError(
            f"{self.arch.model_type}'s final norm has no weights here under --remote"
        )


def _snapshot(repo_id: str, remote: Remote) -> Path:
    """The folder of ``repo_id``'s small files (config, tokenizer), from the Hub or its cache."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(SMALL_FILES)))
    except Exception as err:
        raise needs_network(
            remote,
            f"Could not read {repo_id!r} from the Hugging Face Hub or its cache "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}).",
        ) from err


def load_remote_retriever(
    model: str,
    remote: Remote,
    *,
    kind: str | None = None,
    pooling: Pooling | None = None,
    similarity: Similarity | None = None,
    max_length: int = 256,
) -> RemoteBiEncoder:
    """A retriever of the Hugging Face model ``model`` whose traces run on ``remote``.

    A local folder has no identity a backend knows, so it is refused; the bundled default model
    goes by its Hub id.
    """
    from transformers import AutoConfig, AutoTokenizer

    if model in DEFAULT_ALIASES:
        model = f"sentence-transformers/{DEFAULT_MODEL}"
    if model.startswith((".", "/", "~")) or Path(model).expanduser().exists():
        raise needs_network(
            remote,
            f"{model!r} is a local folder, which a backend cannot load; pass the model's "
            "Hugging Face id (--model ORG/NAME).",
        )
    if remote != "local" and not api_key():
        raise needs_network(remote, "No API key found.")
    folder = _snapshot(model, remote)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if kind not in (None, "bi-encoder") or any(
        a.endswith(("ForSequenceClassification", "ForCausalLM", "ForMaskedLM"))
        for a in config.architectures or []
    ):
        raise RemoteExecutionError(
            f"--remote runs bi-encoders only: the readout of {model!r} "
            f"({kind or ', '.join(config.architectures or [])}) needs head weights here"
        )
    arch = arch_for(config.model_type)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if not getattr(tokenizer, "is_fast", False):
        raise RetrieverLoadError(f"the tokenizer of {model!r} is not a fast tokenizer")
    wrapper = remote_model(model, remote)
    if remote != "local":
        try:
            wrapper.to_model_key()
        except Exception as err:
            raise needs_network(
                remote, f"The Hub did not resolve {model!r} ({type(err).__name__})."
            ) from err
    submodule(wrapper._module, arch.layers)
    settings = sentence_transformers_settings(folder)
    return RemoteBiEncoder(
        wrapper,
        tokenizer,
        arch,
        model,
        f"hf:{model}@{folder.name}",
        remote,
        pooling=pooling or settings.get("pooling", "cls"),  # type: ignore[arg-type]
        similarity=similarity or settings.get("similarity", "dot"),  # type: ignore[arg-type]
        max_length=max_length,
    )
