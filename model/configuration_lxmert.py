"""LXMERT hyper-parameters as a plain dataclass, convertible to and from `transformers.LxmertConfig`.

Field names and defaults follow transformers' `LxmertConfig` (so a hub `config.json` reads
straight in), except `visual_loss_normalizer`, which is the reference's exact 1/0.15 rather
than transformers' rounded 6.67. The fields after the transformers ones choose between the
reference loss rules and documented variants; they travel in `config.json` as extra keys,
which transformers keeps and ignores.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

# The reference's mask rate: each visual loss is divided by B*num_boxes and multiplied by this.
REFERENCE_VISUAL_LOSS_NORMALIZER = 1.0 / 0.15

VISUAL_LABEL_LOSS_SCOPES = ("all", "masked")


def width_scaled_init_range(hidden_size: int) -> float:
    """BERT's initializer_range (0.02 at width 768) at the same per-unit scale for another width."""
    return round(0.02 * (768 / hidden_size) ** 0.5, 4)


@dataclass
class LxmertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_attention_heads: int = 12
    num_qa_labels: int = 9500
    num_object_labels: int = 1600
    num_attr_labels: int = 400
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    l_layers: int = 9
    x_layers: int = 5
    r_layers: int = 5
    visual_feat_dim: int = 2048
    visual_pos_dim: int = 4
    visual_loss_normalizer: float = REFERENCE_VISUAL_LOSS_NORMALIZER
    task_matched: bool = True
    task_mask_lm: bool = True
    task_obj_predict: bool = True
    task_qa: bool = True
    visual_obj_loss: bool = True
    visual_attr_loss: bool = True
    visual_feat_loss: bool = True
    # --- this project's options (not in transformers) ---
    # "all": obj/attr CE on every object weighted by detector confidence (the reference, Q2);
    # "masked": only on the objects whose feature was masked (weight conf * feat_mask).
    visual_label_loss_scope: str = "all"
    # Run the MLM decoder / QA head only on labelled rows (identical loss). None = automatic:
    # on CPU yes; on accelerators no, because selecting a data-dependent number of rows
    # needs a device-to-host sync there, and the masked full computation is cheap on a GPU.
    gather_labelled_rows: bool | None = None
    # Names of the answers of the QA head, in row order (optional; used by answer transfer).
    answers: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.visual_label_loss_scope not in VISUAL_LABEL_LOSS_SCOPES:
            raise ValueError(f"visual_label_loss_scope must be one of {VISUAL_LABEL_LOSS_SCOPES}, "
                             f"got {self.visual_label_loss_scope!r}")
        if self.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' (exact erf GELU, as LXMERT) is supported, "
                             f"got {self.hidden_act!r}")
        if self.answers is not None and len(self.answers) != self.num_qa_labels:
            raise ValueError(f"{len(self.answers)} answer names for num_qa_labels={self.num_qa_labels}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- presets -------------------------------------------------------------------------
    # BERT's initializer_range of 0.02 is tuned for width 768. A narrow model initialised at
    # 0.02 starts with near-uniform attention and tiny sub-layer outputs, and sits on a plateau
    # before it learns to look up the region a word names (tests/test_model_grounding.py;
    # research/2026-11-26-narrow-model-init-range.md). The narrow presets keep BERT's per-unit
    # scale instead: 0.02 * sqrt(768 / hidden_size).
    PRESETS = {
        # the paper's model (9/5/5 layers, BERT-base width)
        "base": {},
        # small enough for CPU tests in a second; still has every module and loss
        "tiny": dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                     l_layers=2, x_layers=2, r_layers=1, visual_feat_dim=24, num_qa_labels=10,
                     num_object_labels=16, num_attr_labels=8, max_position_embeddings=64,
                     initializer_range=width_scaled_init_range(32)),
        # synthetic-world runs: trains in minutes on a laptop CPU
        "small": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                      l_layers=3, x_layers=2, r_layers=2, initializer_range=width_scaled_init_range(256)),
        # the end-to-end demo on a 2-core CPU: ~4x the examples/s of `small` (bench_pretrain.py)
        "demo": dict(hidden_size=128, num_attention_heads=4, intermediate_size=512,
                     l_layers=2, x_layers=2, r_layers=1, initializer_range=width_scaled_init_range(128)),
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LxmertConfig":
        if name not in cls.PRESETS:
            raise ValueError(f"unknown LXMERT preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> "LxmertConfig":
        return dataclasses.replace(self, **changes)

    # ---- dict / json ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LxmertConfig":
        """Known fields only: a hub config.json carries many transformers-generic keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if "id2label" in values and "answers" not in known:
            id2label = values["id2label"]
            # transformers writes LABEL_i placeholders when no names were given
            labels = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
            if len(labels) == known.get("num_qa_labels", cls.num_qa_labels) and not all(
                    str(label) == f"LABEL_{i}" for i, label in enumerate(labels)):
                known["answers"] = labels
        return cls(**known)

    # ---- transformers --------------------------------------------------------------------
    _NOT_IN_TRANSFORMERS = ("visual_label_loss_scope", "gather_labelled_rows", "answers", "layer_norm_eps")

    def to_transformers(self, architectures: list[str] | None = None):
        """A `transformers.LxmertConfig` with the same network; our extra fields ride along
        as extra attributes (written to config.json, ignored by transformers)."""
        import transformers

        values = {k: v for k, v in self.to_dict().items() if k not in self._NOT_IN_TRANSFORMERS}
        config = transformers.LxmertConfig(**values)
        config.visual_label_loss_scope = self.visual_label_loss_scope
        config.gather_labelled_rows = self.gather_labelled_rows
        if architectures:
            config.architectures = list(architectures)
        if self.answers is not None:
            config.id2label = {i: a for i, a in enumerate(self.answers)}
        return config

    @classmethod
    def from_transformers(cls, config) -> "LxmertConfig":
        return cls.from_dict(config.to_dict())

    def to_json_file(self, path: str | os.PathLike, architectures: list[str] | None = None) -> None:
        """config.json in transformers' format (model_type "lxmert")."""
        values = self.to_transformers(architectures).to_dict()
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(values, fh, indent=2, sort_keys=True)
            fh.write("\n")
