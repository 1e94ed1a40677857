"""SASRec-style (causal) and BERT4Rec-style (bidirectional, masked) session encoders.

Dimension legend: B batch, T sequence length, D hidden dim, H heads, V item vocabulary
(tracks + specials), K top-k.

The model returns representations; scoring against the (tied) item table is a separate
method and every loss lives in ``training/losses.py``. Inputs are left-padded as defined
in ``skiprec.encoding``; position ids are counted so that the last slot always has
position ``max_seq_len - 1`` whatever T is, which makes a batch padded to the longest
session equivalent to one padded to ``max_seq_len``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skiprec.encoding import BINARY_FEEDBACK_CODES, FEEDBACK_PAD
from skiprec.vocab import NUM_SPECIAL, PAD_ID
from training.config import Bound, ModelSettings


@dataclass(frozen=True)
class ModelConfig(ModelSettings):
    """The ``[model]`` table plus the vocabulary size: everything the encoder needs.

    This is what a checkpoint stores as ``model_config`` (``to_dict``).
    """

    num_items: Annotated[int, Bound(gt=NUM_SPECIAL)] = field(kw_only=True)  # V

    @classmethod
    def for_vocab(cls, settings: ModelSettings, num_items: int) -> ModelConfig:
        """``settings`` for a vocabulary of ``num_items`` rows (specials included)."""
        return cls(num_items=num_items, **asdict(settings))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)
        self.proj = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x: [B, T, D]; allowed: bool [B, 1, T, T] (may query row attend key col)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        # [B, T, D] -> [B, H, T, D/H]
        q = q.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)
        k = k.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)
        v = v.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)
        # Written out rather than F.scaled_dot_product_attention so the exported ONNX
        # graph is plain MatMul/Softmax on every opset and runtime.
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.num_heads)  # [B,H,T,T]
        att = att.masked_fill(~allowed, float("-inf"))
        att = self.dropout(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        out: Tensor = self.dropout(self.proj(y))
        return out


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_dim, 4 * config.hidden_dim)
        self.proj = nn.Linear(4 * config.hidden_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.dropout(self.proj(F.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_dim)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_dim)
        self.mlp = FeedForward(config)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), allowed)
        x = x + self.mlp(self.ln_2(x))
        return x


class SessionEncoder(nn.Module):
    """Item (+ position, + optional feedback) embeddings -> transformer -> [B, T, D]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.num_items, config.hidden_dim, PAD_ID)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.hidden_dim)
        self.feedback_emb = (
            nn.Embedding(len(BINARY_FEEDBACK_CODES), config.hidden_dim, FEEDBACK_PAD)
            if config.feedback_input
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()

    def forward(self, item_ids: Tensor, feedback: Tensor) -> Tensor:
        """item_ids, feedback: int64 [B, T] left-padded -> hidden [B, T, D]."""
        B, T = item_ids.shape
        positions = torch.arange(T, device=item_ids.device) + (
            self.config.max_seq_len - T
        )
        x = self.item_emb(item_ids) * math.sqrt(self.config.hidden_dim)
        x = x + self.pos_emb(positions)[None]
        if self.feedback_emb is not None:
            x = x + self.feedback_emb(feedback)
        valid = item_ids != PAD_ID  # [B, T]
        x = self.dropout(x) * valid[..., None]
        allowed = self._attention_mask(valid)
        for block in self.blocks:
            x = block(x, allowed)
        hidden: Tensor = self.ln_f(x)
        return hidden

    def _attention_mask(self, valid: Tensor) -> Tensor:
        """bool [B, 1, T, T]: keys must be real events (and not in the future for
        SASRec); the diagonal is always allowed so all-padding rows stay finite."""
        T = valid.shape[1]
        eye = torch.eye(T, dtype=torch.bool, device=valid.device)
        allowed = valid[:, None, None, :] | eye
        if self.config.backbone == "sasrec":
            allowed = allowed & torch.tril(torch.ones_like(eye))
        return allowed

    def score(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] -> logits over the whole item table [..., V] (tied)."""
        return hidden @ self.item_emb.weight.T

    def item_embeddings(self, item_ids: Tensor) -> Tensor:
        """The output-space embedding of tracks: [...] -> [..., D]."""
        embeddings: Tensor = self.item_emb(item_ids)
        return embeddings
