"""The project's one training loop and what it needs: task protocol, optimisers, schedule, run dir."""

from pipeline.training.config import TrainConfig
from pipeline.training.distributed import DistEnv
from pipeline.training.loop import TrainResult, train
from pipeline.training.optim import BertAdam, build_optimizer
from pipeline.training.prepare import prepare_run
from pipeline.training.run_dir import RunDir
from pipeline.training.schedule import warmup_linear, warmup_linear_schedule
from pipeline.training.job import BatchSource, TrainingJob

__all__ = ["BatchSource", "BertAdam", "DistEnv", "RunDir", "TrainConfig", "TrainResult", "TrainingJob",
           "build_optimizer", "prepare_run", "train", "warmup_linear", "warmup_linear_schedule"]
