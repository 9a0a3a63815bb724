"""tunelib's recipes: one script per training method, installed as `tunelib.recipes`.

`tune ls` lists them with their configs; `tune cp NAME ./file.py` copies one to edit.
"""
