"""Pipeline families: how each model family encodes prompts, predicts noise and decodes.

The trainer only talks to `DiffusionFamily`, so a new family is one new module.
"""

from trainer.families.base import DiffusionFamily, PromptEmbeds
from trainer.families.loading import load_family

__all__ = ["DiffusionFamily", "PromptEmbeds", "load_family"]
