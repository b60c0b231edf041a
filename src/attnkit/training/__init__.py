"""Training seq2seq models: the Trainer (exact resume, time budget, DDP), evaluation, and the
recipes ``attnkit train`` and the demo use.

    from attnkit.training import TrainConfig, Trainer, build_model, evaluate
"""

from attnkit.training.recipes import (
    ARCHS,
    RNN_DEFAULTS,
    TRAIN_DEFAULTS,
    TRANSFORMER_DEFAULTS,
    EncodedTask,
    build_model,
    date_data,
    encode_task,
    task_from_meta,
    train_date_model,
)
from attnkit.training.trainer import (
    TrainConfig,
    Trainer,
    TrainResult,
    evaluate,
    learning_rate,
)

__all__ = [
    "ARCHS",
    "RNN_DEFAULTS",
    "TRAIN_DEFAULTS",
    "TRANSFORMER_DEFAULTS",
    "EncodedTask",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "date_data",
    "encode_task",
    "evaluate",
    "learning_rate",
    "task_from_meta",
    "train_date_model",
]
