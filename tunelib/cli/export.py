"""`tune export gguf FOLDER -o FILE.gguf [--outtype f16]`: a model as one GGUF file for llama.cpp and Ollama.

FOLDER is a Hugging Face model folder, a run's output folder (its final model), or a PEFT
LoRA/DoRA adapter folder, which is merged onto its base on the fly (the base its
adapter_config.json names, or --base). Llama 2/3.x, Mistral, Qwen2/2.5/3, Gemma 1/2 and
Phi-3 are supported. --outtype: f32, f16 (default), bf16, or q8_0 (8-bit blocks, about half
the size of f16). The file is written under a temporary name and renamed when complete.
Needs the `gguf` package: pip install 'tunelib[gguf]'.

    tune export gguf out/final -o model.gguf --outtype q8_0
    llama-cli -m model.gguf -cnv            # or: ollama create my-model -f Modelfile (FROM ./model.gguf)
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from tunelib.errors import UserError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model in another format (gguf: for llama.cpp and Ollama)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    g = formats.add_parser("gguf", help="one .gguf file for llama.cpp and Ollama", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("folder", metavar="FOLDER", help="a model folder, a run's output folder, or an adapter folder")
    g.add_argument("-o", "--output", required=True, metavar="FILE", help="the .gguf file to write")
    g.add_argument("--outtype", default="f16", help=f"tensor type: {', '.join(OUTTYPES)} (default: f16)")
    g.add_argument("--base", default=None, metavar="DIR",
                   help="an adapter's base model folder (default: the one its adapter_config.json names)")
    g.add_argument("--name", default=None, help="the model's name inside the file (default: the folder's name)")
    g.add_argument("--force", action="store_true", help="replace FILE if it exists")
    g.set_defaults(func=run)


def run(args) -> int:
    if args.outtype not in OUTTYPES:  # before anything is read: a typo should not wait for a merge
        raise UserError(f"unknown --outtype {args.outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("tune export gguf needs the gguf package: pip install 'tunelib[gguf]'")
    from tunelib.export import export_gguf

    out = Path(args.output)
    print(f"Exporting {args.folder} to {out} ({args.outtype})...", flush=True)
    notes = export_gguf(args.folder, out, outtype=args.outtype, base=args.base, force=args.force, name=args.name)
    for note in notes:
        print(f"note: {note}", flush=True)
    size = out.stat().st_size / 2**20
    print(f"GGUF file: {out.resolve()} ({size:,.1f} MiB)\n"
          f"  llama.cpp: llama-cli -m {out.resolve()} -cnv\n"
          f"  Ollama:    echo 'FROM {out.resolve()}' > Modelfile && ollama create my-model -f Modelfile", flush=True)
    return 0
