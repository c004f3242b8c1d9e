"""A BERT-style transformer encoder, MiniLM-sized (6 layers, hidden 384, 12 heads).

    edgepipe build examples/models/transformer.py:minilm --target cpu

Attention is written out (MatMul, scale, mask add, Softmax, MatMul) the way
Hugging Face's BERT exports, so fusion passes meet the sub-graph real models have.
Inputs are token ids and an attention mask of shape (batch, sequence).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    sequence: int = 128
    written_out_layer_norm: bool = False  # as TF/Keras ports write it: mean, variance, sqrt


class WrittenOutLayerNorm(nn.Module):
    """LayerNorm spelled out in elementary ops, the way many ported models carry it."""

    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deviation = x - x.mean(-1, keepdim=True)
        variance = deviation.pow(2).mean(-1, keepdim=True)
        return deviation / torch.sqrt(variance + self.eps) * self.weight + self.bias


def layer_norm(config: EncoderConfig) -> nn.Module:
    if config.written_out_layer_norm:
        return WrittenOutLayerNorm(config.hidden, 1e-12)
    return nn.LayerNorm(config.hidden, eps=1e-12)


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_size = config.hidden // config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.output = nn.Linear(config.hidden, config.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, sequence, _ = x.shape
        return x.view(batch, sequence, self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        batch, _, sequence, _ = context.shape
        return self.output(context.permute(0, 2, 1, 3).reshape(batch, sequence, -1))


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = layer_norm(config)
        self.intermediate = nn.Linear(config.hidden, config.intermediate)
        self.output = nn.Linear(config.intermediate, config.hidden)
        self.output_norm = layer_norm(config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        hidden = nn.functional.gelu(self.intermediate(x))
        return self.output_norm(x + self.output(hidden))


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
        self.token_type_embeddings = nn.Embedding(2, config.hidden)
        self.embedding_norm = layer_norm(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(torch.zeros_like(input_ids)))
        x = self.embedding_norm(x)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x


def _build(config: EncoderConfig) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    ids = torch.randint(0, config.vocab_size, (1, config.sequence))
    mask = torch.ones(1, config.sequence, dtype=torch.int64)
    return Encoder(config).eval(), {"input_ids": ids, "attention_mask": mask}


def minilm() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """MiniLM-L6-sized encoder (22.6 M parameters), sequence length 128."""
    return _build(EncoderConfig())


def minilm_written_out() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """minilm with its LayerNorms written out, as in TF/Keras ports."""
    return _build(EncoderConfig(written_out_layer_norm=True))


TINY = EncoderConfig(vocab_size=1000, hidden=64, layers=2, heads=4, intermediate=128,
                     max_positions=64, sequence=32)


def minilm_tiny() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The same architecture shrunk for fast tests: 2 layers, hidden 64, vocab 1000."""
    return _build(TINY)


def minilm_tiny_written_out() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """minilm_tiny with its LayerNorms written out, as in TF/Keras ports (fusion test model)."""
    return _build(dataclasses.replace(TINY, written_out_layer_norm=True))
