"""tunelib: PyTorch-native fine-tuning of large language models from YAML recipes.

Importing tunelib is cheap: no torch import happens until a submodule that needs it is used.
"""

__version__ = "0.1.0"
