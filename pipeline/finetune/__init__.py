"""Fine-tuning LXMERT on VQA v2, GQA and NLVR2, and predicting with a fine-tuned run.

- `splits.py`: a task's split as examples (the official files, else LXMERT's json).
- `data.py`: examples as model batches (tokens once, regions from the feature store).
- `init.py`: where the weights start (scratch, a pretraining run, a transformers directory,
  an original checkpoint), answer rows carried over by answer string.
- `tasks.py`: VQA/GQA/NLVR2 as `TrainingJob`s of the one training loop, with their recipes.
- `predict.py`: a run's answers for a split (`evaluate --run`).

The stage that prepares a run and trains it is `pipeline/stages/finetune.py`.
"""

from pipeline.finetune.tasks import TASKS

__all__ = ["TASKS"]
