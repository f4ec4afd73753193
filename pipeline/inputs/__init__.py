"""What LXMERT is fed, shared by pretraining, fine-tuning, evaluation and `predict`.

- `visual.py`: a batch of images from the feature store as padded arrays (features,
  normalised boxes, box mask, detector labels).
- `batch_memory.py`: batch tensors a DataLoader worker hands over without copying them again.
- `text.py`: the run's tokenizer (given, or learnt on the run's corpus and saved with it).
- `model_config.py`: an `LxmertConfig` that fits a feature store, and the check that a
  store fits a model.
"""

from pipeline.inputs.model_config import check_store_fits, config_for_store
from pipeline.inputs.text import TOKENIZER_DIR, run_tokenizer
from pipeline.inputs.visual import VisualBatch, read_visual

__all__ = ["TOKENIZER_DIR", "VisualBatch", "check_store_fits", "config_for_store", "read_visual", "run_tokenizer"]
