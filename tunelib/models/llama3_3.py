"""Llama 3.3 (70B): the Llama 3.1 70B architecture with new weights."""

from tunelib.models import llama3_1
from tunelib.models.build import add_builders

SIZES = {"70b": llama3_1.SIZES["70b"]}
BUILDERS = add_builders(globals(), "llama3_3", "Llama 3.3", SIZES)
