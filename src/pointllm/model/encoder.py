"""Point-BERT encoder (the `PointTransformer` of the original PointLLM, without its max-pool head).

Parameter names match the original so that `point_bert_v1.x.pt` state dicts (keys prefixed
`module.point_encoder.`) load strictly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from pointllm.config import POINT_BERT_SIZE_FIELDS, PointBertConfig
from pointllm.ops import group_points

CHECKPOINT_PREFIX = "module.point_encoder."
# Where a checkpoint of `pointllm pretrain-encoder` keeps the config of its encoder (the published
# point_bert_v1.x.pt files have none): the sizes and `point_dims`.
CHECKPOINT_CONFIG_KEY = "point_config"


class MiniPointNet(nn.Module):
    """Shared PointNet over each group: (B, G, K, C) points -> (B, G, encoder_dims)."""

    def __init__(self, point_dims: int, encoder_dims: int):
        super().__init__()
        self.encoder_dims = encoder_dims
        self.first_conv = nn.Sequential(
            nn.Conv1d(point_dims, 128, 1),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Conv1d(128, 256, 1),
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Conv1d(512, encoder_dims, 1),
        )

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        """The original's 1x1 convolutions, computed as matrix products over (BG, K, C) rows
        (the same numbers, faster on CPUs). The original concatenates each group's pooled
        feature before every per-point one and applies one 512 -> 512 layer; that layer's
        pooled half is the same for all K points, so it is computed once per group."""
        batch, num_group, group_size, channels = groups.shape
        x = groups.reshape(batch * num_group, group_size, channels)  # (BG, K, C)
        conv1, norm1, relu1, conv2 = self.first_conv
        feature = _pointwise(conv2, relu1(_normalize(norm1, _pointwise(conv1, x))))  # (BG, K, 256)
        pooled = feature.amax(dim=1)  # (BG, 256)
        conv3, norm2, relu2, conv4 = self.second_conv
        half = pooled.shape[-1]
        weight = conv3.weight.squeeze(-1)  # (512, 512): [pooled | per point] inputs
        mixed = nn.functional.linear(feature, weight[:, half:])  # (BG, K, 512)
        mixed = mixed + nn.functional.linear(pooled, weight[:, :half], conv3.bias)[:, None]
        feature = _pointwise(conv4, relu2(_normalize(norm2, mixed))).amax(dim=1)  # (BG, D)
        return feature.reshape(batch, num_group, self.encoder_dims)


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv1d applied to channels-last rows (..., C_in) -> (..., C_out)."""
    return nn.functional.linear(x, conv.weight.squeeze(-1), conv.bias)


def _normalize(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the channels of channels-last rows (N, K, C): the statistics of a
    (N, C, K) input, over N and K."""
    return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    def __init__(self, config: PointBertConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(config.trans_dim, config.num_heads, config.mlp_ratio, config.layer_norm_eps)
            for _ in range(config.depth)
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # As in Point-BERT, every block sees the positional embedding added again.
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointBertEncoder(nn.Module):
    """Point cloud (B, N, point_dims) -> tokens (B, num_group + 1, trans_dim), cls token first."""

    def __init__(self, config: PointBertConfig):
        super().__init__()
        self.config = config
        self.encoder = MiniPointNet(config.point_dims, config.encoder_dims)
        self.reduce_dim = nn.Linear(config.encoder_dims, config.trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, config.trans_dim))
        self.pos_embed = nn.Sequential(
            nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.trans_dim)
        )
        self.blocks = TransformerEncoder(config)
        self.norm = nn.LayerNorm(config.trans_dim, eps=config.layer_norm_eps)

    def group(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> neighborhoods (B, G, K, C), centers (B, G, 3). Grouping has no gradient."""
        with torch.no_grad():
            return group_points(points, self.config.num_group, self.config.group_size)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 3 or points.shape[-1] != self.config.point_dims:
            raise ValueError(
                f"point clouds must have shape (B, N, {self.config.point_dims}), got {tuple(points.shape)}"
            )
        dtype = self.reduce_dim.weight.dtype
        neighborhood, centers = self.group(points.float())
        return self.encode_groups(neighborhood.to(dtype), centers.to(dtype))

    def encode_groups(self, neighborhood: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        """Tokens from precomputed groups: (B, G, K, C), (B, G, 3) -> (B, G + 1, trans_dim)."""
        tokens = self.reduce_dim(self.encoder(neighborhood))  # (B, G, D)
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)  # (B, G+1, D)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centers)], dim=1)
        return self.norm(self.blocks(x, pos))

    def load_original_checkpoint(self, path: str | os.PathLike) -> None:
        """Load a published `point_bert_v1.x.pt` (torch pickle read with weights_only=True)."""
        checkpoint = _read_checkpoint(path)
        state = (
            checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
        )
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: not a Point-BERT checkpoint (no state_dict mapping)")
        self.load_encoder_state_dict(state, source=str(path))

    def load_encoder_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "state dict"
    ) -> None:
        """Strictly load encoder weights, accepting the original `module.point_encoder.` prefix."""
        if any(k.startswith(CHECKPOINT_PREFIX) for k in state):
            state = {
                k[len(CHECKPOINT_PREFIX) :]: v
                for k, v in state.items()
                if k.startswith(CHECKPOINT_PREFIX)
            }
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"{source}: Point-BERT weights do not match the encoder config; "
                f"missing keys: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
                f"unexpected keys: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
        wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise ValueError(
                f"{source}: shape mismatch for {wrong[:5]}: e.g. {wrong[0]} is "
                f"{tuple(state[wrong[0]].shape)}, the encoder expects {tuple(own[wrong[0]].shape)}"
            )
        self.load_state_dict(dict(state), strict=True)


def _read_checkpoint(path: str | os.PathLike) -> object:
    """A Point-BERT checkpoint's contents (torch pickle read with weights_only=True)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable/unsafe files
        raise ValueError(
            f"{path}: cannot read Point-BERT checkpoint ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


def read_checkpoint_config(path: str | os.PathLike) -> PointBertConfig | None:
    """The encoder config a checkpoint carries under `CHECKPOINT_CONFIG_KEY`, or None when it
    has none (the published checkpoints)."""
    checkpoint = _read_checkpoint(path)
    fields = checkpoint.get(CHECKPOINT_CONFIG_KEY) if isinstance(checkpoint, Mapping) else None
    if fields is None:
        return None
    expected = {*POINT_BERT_SIZE_FIELDS, "point_dims"}
    if not isinstance(fields, Mapping) or set(fields) != expected:
        raise ValueError(
            f"{path}: {CHECKPOINT_CONFIG_KEY} must hold {', '.join(sorted(expected))}, "
            f"got {fields!r}"
        )
    return PointBertConfig(**fields)
