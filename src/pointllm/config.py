"""Model configurations: the Point-BERT encoder and the composite PointLLM.

`PointLLMConfig` holds the encoder config, the `text_config` of any causal LM, the projector shape
and the point-token settings. It also accepts the original PointLLM `config.json`, where the
Llama fields sit flat at the top level next to `point_backbone_config_name` and friends.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from pointllm.presets import (  # noqa: F401 - re-exported: the config's home for them
    POINT_BERT_PRESETS,
    POINT_BERT_SIZE_FIELDS,
    PROJECTOR_PRESETS,
)

POINT_PATCH_TOKEN = "<point_patch>"
POINT_START_TOKEN = "<point_start>"
POINT_END_TOKEN = "<point_end>"
POINT_PLACEHOLDER = "<point>"
# Label value the loss skips (prompt tokens, padding): the default of torch cross-entropy.
IGNORE_INDEX = -100

# `point_backbone_config_name` values found in original checkpoints.
LEGACY_BACKBONE_NAMES = {
    "PointTransformer_8192point_2layer": "v1.2",
    "PointTransformer_base_8192point": "v1.1",
}
# Token-name keys of original configs, with the only values pointllm's prompts use.
LEGACY_TOKEN_KEYS = {
    "DEFAULT_POINT_PATCH_TOKEN": POINT_PATCH_TOKEN,
    "DEFAULT_POINT_START_TOKEN": POINT_START_TOKEN,
    "DEFAULT_POINT_END_TOKEN": POINT_END_TOKEN,
}
TEMPLATES = ("chat_template", "vicuna_v1_1")


class PointBertConfig(PreTrainedConfig):
    """Point-BERT encoder: FPS + kNN grouping, mini-PointNet, transformer over group tokens."""

    model_type: ClassVar[str] = "point_bert"

    trans_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_group: int = 512
    group_size: int = 32
    encoder_dims: int = 256
    point_dims: int = 6
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in POINT_BERT_SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"PointBertConfig.{name} must be a positive int, got {value!r}")
        if self.trans_dim % self.num_heads:
            raise ValueError(
                f"PointBertConfig.trans_dim={self.trans_dim} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.point_dims not in (3, 6):
            raise ValueError(f"PointBertConfig.point_dims must be 3 or 6, got {self.point_dims!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PointBertConfig:
        """`v1.1` or `v1.2` (the published encoders), optionally with fields overridden."""
        if name not in POINT_BERT_PRESETS:
            raise ValueError(
                f"unknown Point-BERT preset {name!r}; known: {sorted(POINT_BERT_PRESETS)}"
            )
        return cls(**{**POINT_BERT_PRESETS[name], **overrides})

    @property
    def num_tokens(self) -> int:
        """Tokens the encoder emits per cloud: one cls token + one per group."""
        return self.num_group + 1


class PointLLMConfig(PreTrainedConfig):
    """Composite config: `point_config` (PointBertConfig) + `text_config` (any causal LM)."""

    model_type: ClassVar[str] = "pointllm"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "point_config": PointBertConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    point_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    # Hidden sizes of the MLP between encoder and LLM; [] means one Linear layer (v1.1).
    projector_hidden_dims: list[int] | None = None
    projector_act: str = "gelu"
    use_color: bool = True
    # Points per cloud the model was trained on (the original used 8192).
    num_points: int = 8192
    mm_use_point_start_end: bool = True
    point_patch_token_id: int | None = None
    point_start_token_id: int | None = None
    point_end_token_id: int | None = None
    # "chat_template": the backbone tokenizer's own template; "vicuna_v1_1": the original's.
    template: str = "chat_template"
    # The system message of conversations that bring none; None: the template's own default.
    system_prompt: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.text_config is None and "hidden_size" in kwargs:
            kwargs = self._absorb_legacy_layout(kwargs)
        super().__post_init__(**kwargs)
        if self.projector_hidden_dims is None:
            self.projector_hidden_dims = list(PROJECTOR_PRESETS["v1.2"])
        self.projector_hidden_dims = [int(d) for d in self.projector_hidden_dims]
        if any(d <= 0 for d in self.projector_hidden_dims):
            raise ValueError(
                f"PointLLMConfig.projector_hidden_dims must be positive, got {self.projector_hidden_dims}"
            )
        if self.template not in TEMPLATES:
            raise ValueError(
                f"PointLLMConfig.template must be one of {TEMPLATES}, got {self.template!r}"
            )
        expected_dims = 6 if self.use_color else 3
        if self.point_config.point_dims != expected_dims:
            raise ValueError(
                f"use_color={self.use_color} needs point_config.point_dims={expected_dims}, "
                f"got {self.point_config.point_dims}"
            )
        # Follow the LLM: SmolLM2 and friends tie their input and output embeddings.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    def _absorb_legacy_layout(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Build sub-configs from an original PointLLM config.json (flat Llama fields).

        The original-only keys are consumed here, so a converted checkpoint does not carry them:
        `point_backbone_ckpt` names a file on the authors' machines, and the architecture name is
        that of the original class.
        """
        from transformers import LlamaConfig

        backbone = kwargs.pop("point_backbone", "PointBERT")
        if backbone != "PointBERT":
            raise ValueError(f"point_backbone {backbone!r} is not supported; only 'PointBERT' is")
        for key, ours in LEGACY_TOKEN_KEYS.items():
            theirs = kwargs.pop(key, ours)
            if theirs != ours:
                raise ValueError(f"{key} is {theirs!r}; pointllm supports only {ours!r}")
        kwargs.pop("point_backbone_ckpt", None)
        kwargs.pop("architectures", None)
        # pad/head_dim/num_key_value_heads/rope_* are not among LlamaConfig's default fields in
        # transformers 5 but belong to the language model all the same.
        llama_fields = set(LlamaConfig.default_config_fields()) | {
            "pad_token_id",
            "head_dim",
            "num_key_value_heads",
            "rope_theta",
            "rope_scaling",
        }
        text = {k: kwargs.pop(k) for k in list(kwargs) if k in llama_fields}
        # The published configs were saved by the training run with use_cache=false; inference
        # (the original chat passes use_cache=True) wants the KV cache.
        text["use_cache"] = True
        self.text_config = LlamaConfig(**text)
        self.template = "vicuna_v1_1"
        # The original code's default when the key is absent (v1.2).
        name = kwargs.pop("point_backbone_config_name", "PointTransformer_8192point_2layer")
        if name not in LEGACY_BACKBONE_NAMES:
            raise ValueError(
                f"unknown point_backbone_config_name {name!r}; known: {sorted(LEGACY_BACKBONE_NAMES)}"
            )
        preset = LEGACY_BACKBONE_NAMES[name]
        self.point_config = PointBertConfig.from_preset(
            preset, point_dims=6 if self.use_color else 3
        )
        self.projector_hidden_dims = list(PROJECTOR_PRESETS[preset])
        return kwargs

    @property
    def num_point_tokens(self) -> int:
        """Patch tokens that stand for one point cloud in the text."""
        return self.point_config.num_tokens
