"""Where each supported encoder architecture keeps its layers and the modules we read or patch.

Paths are the model's own module names (as in ``model.named_modules()``), relative to the base
encoder (``BertModel``, ``DistilBertModel`` …), so that a reader never learns a second naming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture, relative to the base encoder."""

    model_type: str
    layers: str
    out_proj: str
    """Attention output projection; its input is the concatenation of per-head outputs."""
    mlp_out: str
    """Last linear of the MLP; its output is the MLP write before the residual add."""
    q_proj: str | None
    k_proj: str | None
    v_proj: str | None
    qkv_fused: str | None = None
    """A fused q/k/v projection (ModernBERT), used when q/k/v are not separate."""
    attention: str = "attention"
    """The attention module whose output tuple carries the attention probabilities."""
    final_norm: str | None = None
    """A module the base encoder applies after its last layer (ModernBERT's ``final_norm``)."""


_BERT_LIKE = {
    "layers": "encoder.layer",
    "out_proj": "attention.output.dense",
    "mlp_out": "output.dense",
    "q_proj": "attention.self.query",
    "k_proj": "attention.self.key",
    "v_proj": "attention.self.value",
    "attention": "attention.self",
}

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": ArchSpec("bert", **_BERT_LIKE),
    "roberta": ArchSpec("roberta", **_BERT_LIKE),
    "xlm-roberta": ArchSpec("xlm-roberta", **_BERT_LIKE),
    "electra": ArchSpec("electra", **_BERT_LIKE),
    "distilbert": ArchSpec(
        "distilbert",
        layers="transformer.layer",
        out_proj="attention.out_lin",
        mlp_out="ffn.lin2",
        q_proj="attention.q_lin",
        k_proj="attention.k_lin",
        v_proj="attention.v_lin",
        attention="attention",
    ),
    "modernbert": ArchSpec(
        "modernbert",
        layers="layers",
        out_proj="attn.Wo",
        mlp_out="mlp.Wo",
        q_proj=None,
        k_proj=None,
        v_proj=None,
        qkv_fused="attn.Wqkv",
        attention="attn",
        final_norm="final_norm",
    ),
}


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no entry in ``ARCHITECTURES``."""


def arch_for(model_type: str) -> ArchSpec:
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}: RankScope's adapters cover "
            f"{', '.join(sorted(ARCHITECTURES))}. Use a model of one of these architectures, or add "
            "an ArchSpec for it in tools/retrievers/architectures.py."
        )
    return ARCHITECTURES[model_type]


def submodule(root: nn.Module, path: str) -> nn.Module:
    """The module at a dotted path (``encoder.layer.3.attention.output.dense``)."""
    return root.get_submodule(path)


def model_dims(config: object) -> tuple[int, int, int]:
    """(layers, heads, hidden size) read from a transformers config of any supported family."""
    return (
        _config_int(config, "num_hidden_layers", "n_layers"),
        _config_int(config, "num_attention_heads", "n_heads"),
        _config_int(config, "hidden_size", "dim"),
    )


def _config_int(config: object, *names: str) -> int:
    """The first of ``names`` that ``config`` sets: the families name their sizes differently."""
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise AttributeError(f"{type(config).__name__} sets none of {', '.join(names)}")


def weights_fingerprint(model: nn.Module) -> str:
    """A sha256 over the model's parameters and buffers, for models that have no weight files."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
