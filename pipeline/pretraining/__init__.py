"""LXMERT pretraining: masked LM, cross-modality matching, masked objects and image QA.

- `masking.py`: the reference's masking rules, vectorised over a batch.
- `examples.py`: (image, sentence) pairs of a data root, tokenised and saved in the run.
- `data.py`: `PretrainingData`, the loop's `BatchSource` (examples + feature store -> batch).
- `job.py`: `PretrainingJob`, the `TrainingJob` of the one training loop.
- `options.py`, `recipe.py`: the task's options (reference quirks) and default training settings.

The stage that prepares a run and trains it is `pipeline/stages/pretrain.py`.
"""

from pipeline.pretraining.options import TASKS, PretrainOptions
from pipeline.pretraining.recipe import recipe
from pipeline.pretraining.job import PretrainingJob

__all__ = ["TASKS", "PretrainOptions", "PretrainingJob", "recipe"]
