"""Write a workload's model folder (shared by runs) and its packs file (kept with the results).

    python -m tunebench.prepare --workload cpu-tiny-lora --assets DIR --packs FILE
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunebench import assets, data
from tunebench.workloads import WORKLOADS


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--assets", required=True, type=Path)
    p.add_argument("--packs", required=True, type=Path)
    a = p.parse_args()
    w = WORKLOADS[a.workload]
    assets.make_model_folder(a.assets, w)
    packs = data.make_packs(vocab_size=w.shape.vocab_size, seq_len=w.seq_len, n_packs=w.steps * w.batch_size,
                            mean_doc_len=w.mean_doc_len, seed=w.seed)
    data.save(a.packs, w.seq_len, packs)
    a.packs.with_suffix(".workload.json").write_text(json.dumps(w.to_dict()))


if __name__ == "__main__":
    main()
