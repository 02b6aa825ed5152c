"""The ITKM model on open_clip: backbone (scenario embedding, group stems), learned prompts
through the frozen text transformer, weights resolution and safe checkpoints."""

from .backbone import ImageOutput, ITKMModel, build_model
from .checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from .prompts import PromptLearner, default_template
from .weights import create_clip, register_configs

__all__ = [
    "ImageOutput",
    "ITKMModel",
    "build_model",
    "PromptLearner",
    "default_template",
    "create_clip",
    "register_configs",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_key",
]
