"""LXMERT as plain torch modules, weight-compatible with transformers and the original code.

    from model import LxmertConfig, LxmertForPreTraining, save_pretrained, load_pretrained
    model = LxmertForPreTraining(LxmertConfig.preset("base"))
"""

from model.answer_transfer import lxmert_answer_key, transfer_answer_head, transfer_answer_rows
from model.checkpoints import LoadReport, load_pretrained, save_pretrained
from model.configuration_lxmert import LxmertConfig
from model.errors import CheckpointError
from model.modeling_lxmert import (
    TASKS,
    LxmertForNLVR2,
    LxmertForPreTraining,
    LxmertForQuestionAnswering,
    LxmertModel,
    soft_score_bce_loss,
)

__all__ = [
    "TASKS",
    "CheckpointError",
    "LoadReport",
    "LxmertConfig",
    "LxmertForNLVR2",
    "LxmertForPreTraining",
    "LxmertForQuestionAnswering",
    "LxmertModel",
    "load_pretrained",
    "lxmert_answer_key",
    "save_pretrained",
    "soft_score_bce_loss",
    "transfer_answer_head",
    "transfer_answer_rows",
]
