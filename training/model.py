"""SASRec-style (causal) and BERT4Rec-style (bidirectional, masked) session encoders.

Dimension legend: B batch, T sequence length, D hidden dim, H heads, V item vocabulary
(tracks + specials), K top-k, M selected positions, N candidates per position.

The model returns representations; scoring against the (tied) item table is a separate
method, as is the optional skip head (``SkipHead``: p(skip | session, next = c) for a
candidate track c), and every loss lives in ``training/losses.py``. Inputs are
left-padded as defined in ``skiprec.encoding``; position ids are counted so that the
last slot always has position ``max_seq_len - 1`` whatever T is, which makes a batch
padded to the longest session equivalent to one padded to ``max_seq_len``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skiprec.encoding import BINARY_FEEDBACK_CODES, FEEDBACK_CODES, FEEDBACK_PAD
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
        # Graded models embed every code of FEEDBACK_CODES (play/skip without a
        # grade, and the four skip levels); the others the binary codes only.
        codes = FEEDBACK_CODES if config.graded_feedback else BINARY_FEEDBACK_CODES
        self.feedback_emb = (
            nn.Embedding(len(codes), config.hidden_dim, FEEDBACK_PAD)
            if config.feedback_input
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_dim)
        self.skip_head = SkipHead(config) if config.skip_head else None
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

    def skip_logits(self, hidden: Tensor, candidates: Tensor) -> Tensor:
        """Skip logits of candidate next tracks: hidden [M, D], candidates int64
        [M, N] -> [M, N] (``sigmoid`` gives p_skip). Needs the skip head."""
        head = self._head()
        query, session = head.features(hidden)  # [M, D], [M]
        # [M, 1, D] * [M, N, D] -> [M, N]
        bilinear = (query[:, None, :] * self.item_embeddings(candidates)).sum(-1)
        bias: Tensor = head.bias_emb(candidates).squeeze(-1)  # [M, N]
        return bilinear + bias + session[:, None]

    def skip_logits_all(self, hidden: Tensor) -> Tensor:
        """Skip logits of every item as the next track: hidden [M, D] -> [M, V]."""
        head = self._head()
        query, session = head.features(hidden)  # [M, D], [M]
        # [M, D] @ [D, V] -> [M, V]
        bilinear = query @ self.item_emb.weight.T
        return bilinear + head.bias_emb.weight.T + session[:, None]

    @property
    def skip_weight(self) -> float:
        """beta of ``logits + beta * log(1 - p_skip)``; 0 without a skip head."""
        if self.skip_head is None:
            return 0.0
        return float(self.skip_head.get_buffer("skip_weight"))

    def set_skip_weight(self, beta: float) -> None:
        self._head().get_buffer("skip_weight").fill_(beta)

    def _head(self) -> SkipHead:
        if self.skip_head is None:
            raise ValueError("this model has no skip head ([model] skip_head = false)")
        return self.skip_head


class SkipHead(nn.Module):
    """p(skip | session, next = c) for a candidate next track c.

        z = gelu(W_1 h + b_1),  q = W_q z + b_q,  s = w_s . z + b_s
        logit(c) = q . e_c + r_c + s,   p_skip(c) = sigmoid(logit(c))

    with h the session's hidden state at the position that predicts c, e_c the
    (tied) item embedding and r_c a learned per-track skip propensity. ``s`` is
    the session's skip tendency (momentum), the part that is the same for every
    candidate; ``q . e_c + r_c`` is the candidate-specific part, the only one that
    can change a ranking. Bilinear so that all V candidates cost one [D, V] MatMul.

    ``skip_weight`` (a buffer, saved with the model) is the ranking weight beta of
    ``score = logits + beta * log(1 - p_skip)``, chosen on validation after
    training (``training.trainer``); 0 ranks by the next-track logits alone.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.query = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.session = nn.Linear(config.hidden_dim, 1)
        self.bias_emb = nn.Embedding(config.num_items, 1)  # r_c, [V, 1]
        self.register_buffer("skip_weight", torch.zeros(()))

    def features(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden [..., D] -> (query [..., D], session logit [...])."""
        z = F.gelu(self.fc(hidden))
        query: Tensor = self.query(z)
        session: Tensor = self.session(z).squeeze(-1)
        return query, session
