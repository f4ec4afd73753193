"""Official evaluation of VQA v2, GQA and NLVR2: metrics as pure functions on predictions
and the official files' contents, the submission formats, and the `evaluate` stage.

Metric definitions and the official scripts' quirks: docs/reference/evaluation.md.
"""

from pipeline.evaluation.evaluate import Evaluation, evaluate_predictions, read_predictions, write_evaluation
from pipeline.evaluation.gqa import gqa_metrics
from pipeline.evaluation.nlvr2 import nlvr2_metrics
from pipeline.evaluation.vqa import question_accuracy, vqa_metrics

__all__ = ["Evaluation", "evaluate_predictions", "read_predictions", "write_evaluation",
           "gqa_metrics", "nlvr2_metrics", "question_accuracy", "vqa_metrics"]
