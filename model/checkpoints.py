"""Checkpoint export/import: transformers-format directories and original LXMERT `.pth` files.

- `save_pretrained(model, dir)`: `config.json` + `model.safetensors`, loadable by
  `transformers.LxmertForPreTraining.from_pretrained(dir)` (and our `load_pretrained`).
- `load_pretrained(path)`: a transformers/hub-format directory (`model.safetensors` or
  `pytorch_model.bin`), or an original airsplay/lxmert checkpoint: pretraining
  (`module.bert.*`, `cls.*`, `obj_predict_head.*`, `answer_head.*`) or fine-tuned VQA/GQA/NLVR2
  (`lxrt_encoder.model.bert.*`, `logit_fc.*`). Nothing executes code: safetensors, or
  `torch.load(weights_only=True)`.
- Keys or shapes that do not fit give one `CheckpointError` listing them, never a bare
  `RuntimeError` from `load_state_dict`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.answer_transfer import answer_list, lxmert_answer_key, transfer_answer_rows
from model.configuration_lxmert import LxmertConfig
from model.errors import CheckpointError, refused_pickle, torch_load_reason
from model.modeling_lxmert import (
    MODEL_CLASSES,
    LxmertForNLVR2,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
    LxmertPreTrainedModel,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
# keys of heads: absent from the target model they are skipped (a pretraining checkpoint
# initialising a QA model), never an error
HEAD_PREFIXES = ("cls.", "obj_predict_head.", "answer_head.", "logit_fc.")
TIED_KEYS = ("cls.predictions.decoder.weight",)


# ---------------------------------------------------------------------------------------------
# reading raw state dicts


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch pickle (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types
            raise CheckpointError(f"not a readable safetensors file ({err})", path) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors of every kind
        raise CheckpointError(refused_pickle(err) or f"not a readable torch checkpoint with weights only "
                              f"({torch_load_reason(err)})", path) from None
    # training snapshots sometimes nest the weights
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("does not hold a state dict (name -> tensor)", path)
    return dict(state)


def rename_original_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """airsplay/lxmert names -> transformers names; returns (state, kind).

    kind, read off the heads present: "pretraining" (`cls.*`), "qa" (an answer head only),
    "nlvr2" (`logit_fc.*` over two pooled outputs) or "backbone". Transformers names pass
    through unchanged.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        # nn.DataParallel wraps either the whole model or lxrt_encoder.model
        key = re.sub(r"(^|\.)module\.", r"\1", key)
        if key.startswith("lxrt_encoder.model.bert."):
            key = "lxmert." + key[len("lxrt_encoder.model.bert."):]
        elif key.startswith("bert."):
            key = "lxmert." + key[len("bert."):]
        renamed[key] = value
    if any(k.startswith("cls.") for k in renamed):
        return renamed, "pretraining"
    if "logit_fc.0.weight" in renamed:
        encoder = renamed.get("lxmert.pooler.dense.weight")
        if encoder is not None and renamed["logit_fc.0.weight"].shape[1] == 2 * encoder.shape[0]:
            return renamed, "nlvr2"
        # the original VQA/GQA models call their answer head `logit_fc`
        renamed = {("answer_head." + k if k.startswith("logit_fc.") else k): v for k, v in renamed.items()}
        return renamed, "qa"
    if any(k.startswith("answer_head.") for k in renamed):
        return renamed, "qa"
    return renamed, "backbone"


def infer_config(state: Mapping[str, torch.Tensor], **overrides) -> LxmertConfig:
    """The network shape read off the tensors (heads = hidden / 64, BERT's head size, unless
    given), for original checkpoints that come without a config."""
    def count(prefix: str) -> int:
        indices = {int(m.group(1)) for k in state for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
        return max(indices) + 1 if indices else 0

    try:
        words = state["lxmert.embeddings.word_embeddings.weight"]
        values = dict(
            vocab_size=words.shape[0], hidden_size=words.shape[1],
            max_position_embeddings=state["lxmert.embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=state["lxmert.embeddings.token_type_embeddings.weight"].shape[0],
            intermediate_size=state["lxmert.encoder.layer.0.intermediate.dense.weight"].shape[0]
            if "lxmert.encoder.layer.0.intermediate.dense.weight" in state
            else state["lxmert.encoder.x_layers.0.lang_inter.dense.weight"].shape[0],
            l_layers=count("lxmert.encoder.layer."), x_layers=count("lxmert.encoder.x_layers."),
            r_layers=count("lxmert.encoder.r_layers."),
            visual_feat_dim=state["lxmert.encoder.visn_fc.visn_fc.weight"].shape[1],
            visual_pos_dim=state["lxmert.encoder.visn_fc.box_fc.weight"].shape[1],
        )
    except KeyError as err:
        raise CheckpointError(f"not an LXMERT checkpoint: no tensor {err.args[0]!r}") from None
    values["num_attention_heads"] = max(1, values["hidden_size"] // 64)
    for key, name in (("obj_predict_head.decoder_dict.obj.weight", "num_object_labels"),
                      ("obj_predict_head.decoder_dict.attr.weight", "num_attr_labels"),
                      ("answer_head.logit_fc.3.weight", "num_qa_labels")):
        if key in state:
            values[name] = state[key].shape[0]
    if any(k.startswith("obj_predict_head.") for k in state):
        for loss in ("obj", "attr", "feat"):
            values[f"visual_{loss}_loss"] = f"obj_predict_head.decoder_dict.{loss}.weight" in state
    if any(k.startswith("cls.") for k in state):
        values["task_obj_predict"] = any(k.startswith("obj_predict_head.") for k in state)
        values["task_qa"] = any(k.startswith("answer_head.") for k in state)
    values.update(overrides)
    return LxmertConfig(**values)


# ---------------------------------------------------------------------------------------------
# loading a state dict into a model, with one report


@dataclass
class LoadReport:
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "name: checkpoint (a, b) vs model (c, d)"
    skipped_heads: list[str] = field(default_factory=list)
    answers_matched: int | None = None
    answers_total: int | None = None

    def problems(self) -> str:
        parts = []
        for title, names in (("shape mismatches", self.mismatched), ("missing from the checkpoint", self.missing),
                             ("unexpected in the checkpoint", self.unexpected)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
                parts.append(f"{len(names)} {title}: {shown}")
        return "; ".join(parts)

    def summary(self) -> str:
        text = f"{self.loaded} tensors loaded"
        if self.skipped_heads:
            heads = sorted({k.split(".")[0] for k in self.skipped_heads})
            text += f", {len(self.skipped_heads)} skipped (heads not in this model: {', '.join(heads)})"
        if self.missing:
            text += f", {len(self.missing)} newly initialised ({_prefixes(self.missing)})"
        if self.answers_total is not None:
            text += f", answer head: {self.answers_matched}/{self.answers_total} answers matched by name"
        return text


def _prefixes(names: Sequence[str]) -> str:
    return ", ".join(sorted({".".join(n.split(".")[:2]) for n in names}))


def load_state_into(model: LxmertPreTrainedModel, state: Mapping[str, torch.Tensor], *,
                    path: str | os.PathLike | None = None, allow_missing_heads: bool = False,
                    skip: Sequence[str] = ()) -> LoadReport:
    """Copy `state` into `model` after checking every name and shape.

    Head tensors the model has no place for are skipped; `allow_missing_heads` lets the
    model's own heads stay as initialised (fine-tuning from a pretraining checkpoint). The
    backbone must match exactly. Keys starting with a prefix in `skip` are not loaded.
    """
    own = model.state_dict()
    report = LoadReport()
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(key.startswith(prefix) for prefix in skip):
            continue
        if key not in own:
            (report.skipped_heads if key.startswith(HEAD_PREFIXES) else report.unexpected).append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    for key in own:
        if key in usable or key in TIED_KEYS or any(key.startswith(prefix) for prefix in skip):
            continue
        if key in state:  # present but mismatched, already reported
            continue
        report.missing.append(key)
    # report in the model's order (embeddings first), not the file's (often alphabetical)
    order = {key: i for i, key in enumerate(own)}
    report.mismatched.sort(key=lambda item: order[item.split(":")[0]])
    fatal_missing = [k for k in report.missing if not (allow_missing_heads and k.startswith(HEAD_PREFIXES))]
    if report.mismatched or report.unexpected or fatal_missing:
        shown = LoadReport(mismatched=report.mismatched, unexpected=report.unexpected, missing=fatal_missing)
        raise CheckpointError(f"does not fit {type(model).__name__} "
                              f"(hidden {model.config.hidden_size}, layers {model.config.l_layers}/"
                              f"{model.config.r_layers}/{model.config.x_layers}): {shown.problems()}", path)
    with torch.no_grad():
        for key, value in usable.items():
            own[key].copy_(value)
    model.tie_weights()
    report.loaded = len(usable)
    return report


# ---------------------------------------------------------------------------------------------
# directories


def save_pretrained(model: LxmertPreTrainedModel, directory: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` (transformers' layout; tied decoder omitted).

    Plain files, as transformers writes them: a caller that needs the directory to appear
    complete or not at all writes into a temporary directory and renames it (the pipeline
    does, docs/files.md).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
               if k not in TIED_KEYS}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    model.config.to_json_file(directory / CONFIG_NAME, architectures=[model.architecture])
    return directory


def _model_class(name: str | None, kind: str) -> type[LxmertPreTrainedModel]:
    if name in MODEL_CLASSES:
        return MODEL_CLASSES[name]
    return {"pretraining": LxmertForPreTraining, "qa": LxmertForQuestionAnswering,
            "nlvr2": LxmertForNLVR2, "backbone": LxmertModel}.get(kind, LxmertForPreTraining)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LxmertConfig | None, str | None, str]:
    """(state with transformers names, config if the checkpoint has one, architecture, kind)."""
    path = Path(path)
    if path.is_dir():
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise CheckpointError(f"no {CONFIG_NAME}: not a transformers-format LXMERT directory", path)
        try:
            values = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"unreadable config ({err})", config_file) from None
        if values.get("model_type") not in (None, "lxmert"):
            raise CheckpointError(f"model_type is {values.get('model_type')!r}, not 'lxmert'", config_file)
        try:
            config = LxmertConfig.from_dict(values)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"invalid LXMERT config ({err})", config_file) from None
        weights = next((path / n for n in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME) if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"no {WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}", path)
        state, kind = rename_original_keys(read_state_dict(weights))
        architectures = values.get("architectures") or []
        return state, config, (architectures[0] if architectures else None), kind
    state, kind = rename_original_keys(read_state_dict(path))
    return state, None, None, kind


def load_pretrained(path: str | os.PathLike, model_class: type[LxmertPreTrainedModel] | None = None, *,
                    config: LxmertConfig | None = None, answers=None, source_answers=None,
                    return_report: bool = False, **config_overrides):
    """Build a model from a directory or an original `.pth`.

    `model_class` defaults to the checkpoint's own. Loading into another class keeps the
    backbone and the heads both have; a QA model built from a checkpoint whose answer head
    has other answers gets its rows by answer string when `answers` (target) and the source
    answer names (`source_answers`, or those stored in the checkpoint's config) are known.
    """
    path = Path(path)
    state, stored_config, architecture, kind = read_checkpoint(path)
    cls = model_class or _model_class(architecture, kind)
    if config is None:
        config = stored_config or infer_config(state)
    if source_answers is None:
        source_answers = config.answers
    head_rows = state.get("answer_head.logit_fc.3.weight")
    overrides = dict(config_overrides)
    if answers is not None:
        answers = answer_list(answers)
        overrides.update(num_qa_labels=len(answers), answers=answers)
    elif head_rows is not None and cls is LxmertForQuestionAnswering:
        overrides.setdefault("num_qa_labels", head_rows.shape[0])
    if overrides.get("num_qa_labels", config.num_qa_labels) != config.num_qa_labels and "answers" not in overrides:
        overrides["answers"] = None
    config = config.replace(**overrides)
    model = cls(config)
    transfer = (head_rows is not None and hasattr(model, "answer_head") and
                (head_rows.shape[0] != config.num_qa_labels or
                 (answers is not None and source_answers is not None
                  and answer_list(source_answers) != answers)))
    skip = ("answer_head.logit_fc.3.",) if transfer else ()
    # heads may be fresh only when the model is not the checkpoint's own kind (a pretraining
    # checkpoint starting a QA model) or when the answer rows come by transfer
    allow_missing_heads = transfer or cls is not _model_class(architecture, kind)
    report = load_state_into(model, state, path=path, allow_missing_heads=allow_missing_heads, skip=skip)
    if transfer:
        if source_answers is None or answers is None:
            raise CheckpointError(
                f"the checkpoint's answer head has {head_rows.shape[0]} answers and the model "
                f"{config.num_qa_labels}: give the answer names of both (answers=, source_answers=) "
                f"to transfer rows by answer string", path)
        report.answers_matched = transfer_answer_rows(
            head_rows, state["answer_head.logit_fc.3.bias"], source_answers,
            model.answer_head.logit_fc[3], answers, normalize=lxmert_answer_key)
        report.answers_total = len(answers)
        report.missing = [k for k in report.missing if not k.startswith("answer_head.logit_fc.3.")]
    return (model, report) if return_report else model
