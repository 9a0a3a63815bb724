"""tunebench: the same fine-tuning work through tunelib, torchtune and Hugging Face PEFT.

Run it with `benchmarks/run.py` (see its docstring). The modules here import only the
standard library, numpy and torch, so every library's virtual environment can import them;
each driver in `drivers/` imports its own library.
"""
