"""One module per library: `python -m tunebench.drivers.<library>` runs a workload and writes its result."""
