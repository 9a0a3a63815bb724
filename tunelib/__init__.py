"""tunelib: PyTorch-native fine-tuning of large language models from YAML recipes.

Importing tunelib is cheap: no torch import happens until a submodule that needs it is used.
"""

__version__ = "0.1.0"

import logging as _logging

# torchao logs a warning per compiled kernel library it cannot load (other CUDA or Python
# builds); tunelib uses only its pure-PyTorch paths, so those lines are noise on every run.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
