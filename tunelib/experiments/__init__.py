"""Experiments: many runs planned and run as one sweep, and runs read back to be compared.

`grid` turns `--grid KEY=v1,v2` into points and names them; `sweep` runs the points and keeps
`sweep.json`; `runs` reads a run folder (tunelib's own, a torchtune DiskLogger log, an HF
Trainer `trainer_state.json`); `report` makes the comparison table, the plot and the HTML page.
Nothing here imports torch at import time, so `tune --help` stays fast.
"""
