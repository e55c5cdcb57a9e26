"""PointLLM: Point-BERT encoder -> projector -> any Hugging Face causal LM.

The model holds its three parts. Text arrives with each point cloud already expanded into
`num_point_tokens` `<point_patch>` tokens (see `pointllm.data`); the forward pass embeds the text,
writes the projected point features into the patch positions with one `masked_scatter`, and runs
the language model on the result.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from pointllm.config import (
    IGNORE_INDEX,
    POINT_END_TOKEN,
    POINT_PATCH_TOKEN,
    POINT_START_TOKEN,
    PointBertConfig,
    PointLLMConfig,
)
from pointllm.model import checkpoint
from pointllm.model.checkpoint import ADAPTER_INFO_FILE as LORA_ADAPTER_INFO  # noqa: F401
from pointllm.model.checkpoint import load as load_pointllm  # noqa: F401 (re-exported)
from pointllm.model.checkpoint import save as save_pointllm  # noqa: F401 (re-exported)
from pointllm.model.encoder import PointBertEncoder
from pointllm.model.projector import PointProjector


class PointLLMPreTrainedModel(PreTrainedModel):
    config_class = PointLLMConfig
    config: PointLLMConfig
    base_model_prefix = "pointllm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        # Only our own parts are initialised here; the language model keeps its own scheme.
        if isinstance(module, PointBertEncoder):
            nn.init.zeros_(module.cls_token)
            nn.init.normal_(module.cls_pos, std=1.0)


class PointLLMForCausalLM(PointLLMPreTrainedModel):
    """Point encoder + projector + causal LM, composed (the LLM is not subclassed)."""

    def __init__(self, config: PointLLMConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        self.point_backbone = PointBertEncoder(config.point_config)
        self.point_proj = PointProjector(
            config.point_config.trans_dim,
            config.text_config.hidden_size,
            config.projector_hidden_dims,
            config.projector_act,
        )
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.language_model = language_model
        # Learned input embeddings of <point_start>/<point_end>. Kept apart from the LLM's
        # embedding matrix so stage 1 can train them while that matrix stays bit-identical.
        self.point_boundary_embeds = (
            nn.Parameter(torch.zeros(2, config.text_config.hidden_size))
            if config.mm_use_point_start_end
            else None
        )
        self.post_init()

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a checkpoint of ours, or an original PointLLM one (flat Llama config.json, original
        weight names), which `pointllm.model.legacy` reads."""
        if (
            pretrained_model_name_or_path is not None
            and checkpoint.config_kind(pretrained_model_name_or_path) is checkpoint.Kind.ORIGINAL
        ):
            from pointllm.model import legacy

            return legacy.from_pretrained_original(pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_backbone(
        cls,
        llm_name_or_path: str | os.PathLike,
        point_config: PointBertConfig | None = None,
        *,
        projector_hidden_dims: Iterable[int] | None = None,
        mm_use_point_start_end: bool = True,
        template: str = "chat_template",
        dtype: torch.dtype | str | None = None,
        **llm_kwargs,
    ) -> tuple[PointLLMForCausalLM, PreTrainedTokenizerBase]:
        """A new PointLLM on a pretrained LLM (a local HF dir, a hub id, or `smollm2-135m` for the
        embedded default). Returns the model and its tokenizer, with point tokens added."""
        from pointllm.model.backbones import resolve_backbone

        path = resolve_backbone(llm_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        llm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", **llm_kwargs)
        point_config = point_config or PointBertConfig.from_preset("v1.2")
        config = PointLLMConfig(
            point_config=point_config,
            text_config=llm.config,
            projector_hidden_dims=list(projector_hidden_dims)
            if projector_hidden_dims is not None
            else None,
            use_color=point_config.point_dims == 6,
            mm_use_point_start_end=mm_use_point_start_end,
            template=template,
        )
        attn_implementation = llm.config._attn_implementation
        model = cls(config, language_model=llm)
        # Building the wrapper resets the sub-config's attention choice; restore the LLM's. Only
        # the LLM's: the encoder is not a transformers model, and naming it would log a warning.
        model.set_attn_implementation({"": attn_implementation, "text_config": attn_implementation})
        model.to(llm.dtype)
        model.setup_point_tokens(tokenizer)
        return model, tokenizer

    def setup_point_tokens(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Add the point tokens to `tokenizer`, grow the LLM's vocabulary to match (new rows set to
        the mean embedding) and record the token ids in the config."""
        tokens = [POINT_PATCH_TOKEN]
        if self.config.mm_use_point_start_end:
            tokens += [POINT_START_TOKEN, POINT_END_TOKEN]
        tokenizer.add_tokens(tokens, special_tokens=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.resize_vocabulary(len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(tokens)
        self.config.point_patch_token_id = ids[0]
        if self.config.mm_use_point_start_end:
            self.config.point_start_token_id, self.config.point_end_token_id = ids[1], ids[2]
            with torch.no_grad():
                embeds = self.language_model.get_input_embeddings().weight
                self.point_boundary_embeds.copy_(embeds[[ids[1], ids[2]]])

    def resize_vocabulary(self, size: int) -> None:
        """Resize input/output embeddings to `size` rows; new rows get the mean of the old ones."""
        embeddings = self.language_model.get_input_embeddings()
        old = embeddings.weight.shape[0]
        if size == old:
            return
        self.language_model.resize_token_embeddings(size, mean_resizing=False)
        with torch.no_grad():
            for layer in (
                self.language_model.get_input_embeddings(),
                self.language_model.get_output_embeddings(),
            ):
                if layer is not None and size > old:
                    layer.weight[old:] = layer.weight[:old].mean(dim=0)
        self.config.text_config.vocab_size = size

    # ---- parts and freezing -------------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_trainable(
        self, *, encoder: bool, projector: bool, llm: bool, point_tokens: bool = True
    ) -> None:
        """Choose which parts train. A frozen encoder also keeps its BatchNorm in eval mode."""
        self.point_backbone.requires_grad_(encoder)
        self.point_proj.requires_grad_(projector)
        self.language_model.requires_grad_(llm)
        if self.point_boundary_embeds is not None:
            self.point_boundary_embeds.requires_grad_(point_tokens)
        self._sync_encoder_mode()

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.point_backbone.parameters())

    def _sync_encoder_mode(self) -> None:
        if self.encoder_frozen:
            self.point_backbone.eval()

    def train(self, mode: bool = True) -> PointLLMForCausalLM:
        super().train(mode)
        self._sync_encoder_mode()
        return self

    # ---- forward ------------------------------------------------------------------------------

    def encode_points(self, point_clouds: torch.Tensor) -> torch.Tensor:
        """(B, N, C) clouds -> (B, num_point_tokens, hidden) features in the LLM's space."""
        tokens = self.point_backbone(point_clouds)  # (B, G+1, trans_dim)
        return self.point_proj(tokens.to(self.point_proj[0].weight.dtype))

    def embed_inputs(
        self, input_ids: torch.LongTensor, point_clouds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings with point features written into the `<point_patch>` positions.

        input_ids: (B, T). point_clouds: (P, N, C), one cloud per row of input_ids that contains
        patch tokens, in row order (rows without points are allowed in the same batch).
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)  # (B, T, H)
        cfg = self.config
        if self.point_boundary_embeds is not None:
            boundary = self.point_boundary_embeds.to(embeds.dtype)
            start = (input_ids == cfg.point_start_token_id).unsqueeze(-1)  # (B, T, 1)
            end = (input_ids == cfg.point_end_token_id).unsqueeze(-1)
            embeds = torch.where(start, boundary[0], torch.where(end, boundary[1], embeds))
        patch_mask = input_ids == cfg.point_patch_token_id  # (B, T)
        num_patch = int(patch_mask.sum())
        if point_clouds is None:
            if num_patch:
                raise ValueError(
                    f"input has {num_patch} <point_patch> tokens but no point_clouds were given"
                )
            return embeds
        per_row = patch_mask.sum(dim=1)  # (B,)
        expected = cfg.num_point_tokens
        bad_rows = ((per_row != 0) & (per_row != expected)).nonzero().flatten().tolist()
        if bad_rows:
            raise ValueError(
                f"rows {bad_rows} have {per_row[bad_rows].tolist()} <point_patch> tokens; each cloud "
                f"needs exactly {expected}"
            )
        clouds_in_text = int((per_row == expected).sum())
        if clouds_in_text != point_clouds.shape[0]:
            raise ValueError(
                f"the text holds {clouds_in_text} point blocks ({num_patch} <point_patch> tokens) "
                f"but {point_clouds.shape[0]} point clouds were given"
            )
        features = self.encode_points(point_clouds).to(embeds.dtype)  # (P, G+1, H)
        return embeds.masked_scatter(patch_mask.unsqueeze(-1), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        point_clouds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, T), attention_mask (B, T), point_clouds (P, N, 6 or 3), labels (B, T)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("forward needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, point_clouds)
        if labels is not None and self.training and self._keeps_selected_logits():
            return self._loss_on_target_positions(inputs_embeds, attention_mask, labels, **kwargs)
        return self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs
        )

    def _keeps_selected_logits(self) -> bool:
        """Whether the LLM's forward takes `logits_to_keep` as positions (transformers' causal LMs
        do), so that training computes logits only where a label follows."""
        base = getattr(self.language_model, "get_base_model", lambda: self.language_model)()
        return "logits_to_keep" in inspect.signature(base.forward).parameters

    def _loss_on_target_positions(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.LongTensor,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The causal-LM loss with the vocabulary projection run only at positions whose next
        token is a target in some row of the batch (the prompt, the system text and the point
        tokens never are). Same loss and gradients as the LLM's own `labels` path; saves the
        (B, T, vocab) logits in memory and most of the projection's time. The returned logits
        are (B, P, vocab) at those P positions only.
        """
        targets = labels[:, 1:]  # (B, T-1): the token each position predicts
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            logits_to_keep=positions,
            **kwargs,
        )
        picked = targets[:, positions]  # (B, P)
        loss = nn.functional.cross_entropy(
            outputs.logits.float().flatten(0, 1),
            picked.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        # As transformers' loss: a token mean, or a sum over the count the Trainer passes for
        # gradient accumulation. A batch without targets gives 0, not NaN.
        count = (
            num_items_in_batch if num_items_in_batch is not None else (picked != IGNORE_INDEX).sum()
        )
        outputs.loss = loss / (count.clamp(min=1) if torch.is_tensor(count) else max(count, 1))
        return outputs

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        point_clouds: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate with the LLM's KV cache; the clouds are encoded once, for the prefill.

        Returns (B, T + new) ids: the prompt followed by the generated tokens, as transformers does.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed_inputs(input_ids, point_clouds)
        generate_kwargs.setdefault(
            "pad_token_id", self.language_model.generation_config.pad_token_id
        )
        new_tokens = self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` know the `pointllm` model type."""
    try:
        AutoConfig.register("point_bert", PointBertConfig)
        AutoConfig.register("pointllm", PointLLMConfig)
        AutoModelForCausalLM.register(PointLLMConfig, PointLLMForCausalLM)
    except ValueError:
        pass  # already registered in this process


register_auto_classes()
