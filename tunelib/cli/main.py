"""`tune`: the command line of tunelib.

    tune ls [FILTER]                     recipes and their configs
    tune cp NAME DEST                    copy a recipe or config to edit
    tune cat CONFIG [OVERRIDES]          the resolved YAML
    tune validate CONFIG [OVERRIDES]     the checks `tune run` makes, nothing run
    tune run [TORCHRUN-OPTIONS] RECIPE --config CONFIG [OVERRIDES]
    tune download REPO_ID [--output-dir DIR]
    tune preview CONFIG [OVERRIDES]       the first training samples, trained tokens marked
    tune chat CHECKPOINT_DIR [--adapter DIR]       talk with a model in the terminal
    tune merge_lora --adapter DIR --output-dir DIR  a LoRA/DoRA adapter merged into its base
    tune migrate FILE [-o OUT]           a torchtune config rewritten in tunelib's form
    tune sweep RECIPE --config CONFIG --grid KEY=V1,V2 [OVERRIDES]  one run per point of a grid
    tune compare DIR...                  runs side by side: table, loss curves, HTML, JSON
    tune estimate RECIPE --config CONFIG [OVERRIDES]  peak memory per device and time per step, nothing loaded
    tune export gguf FOLDER -o FILE.gguf [--outtype f16]  one file for llama.cpp and Ollama
    tune upload FOLDER REPO_ID [--public]  a trained model to the Hugging Face Hub, with a model card

Bad input prints one line, `tune: error: ...`, and exits with code 2.

The same CLI is installed as `tunelib` too, which then names itself so (torchtune's package
also installs a `tune`; `tunelib --version` says whose `tune` the PATH runs).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tunelib.cli import coexist
from tunelib.errors import UserError, program, tell

# Verb -> module; each module has add_parser(subparsers) and run(args).
VERBS = {
    "ls": "tunelib.cli.ls",
    "cp": "tunelib.cli.cp",
    "cat": "tunelib.cli.cat",
    "validate": "tunelib.cli.validate",
    "run": "tunelib.cli.run",
    "download": "tunelib.cli.download",
    "preview": "tunelib.cli.preview",
    "chat": "tunelib.cli.chat",
    "merge_lora": "tunelib.cli.merge_lora",
    "migrate": "tunelib.cli.migrate",
    "sweep": "tunelib.cli.sweep",
    "compare": "tunelib.cli.compare",
    "estimate": "tunelib.cli.estimate",
    "export": "tunelib.cli.export",
    "upload": "tunelib.cli.upload",
}

WORD_VERBS = ("run", "validate", "cat", "preview", "sweep", "estimate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (cheap: no verb imports torch to build it)."""
    name = program()
    parser = argparse.ArgumentParser(
        prog=name,
        description="Fine-tune large language models from YAML recipes.",
        epilog=_epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true",
                        help="print tunelib's version, and whether the `tune` on your PATH is tunelib's")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `tune` with `argv` (default: sys.argv[1:]) and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, so a reader that went away is seen now and not at interpreter exit
        return code
    except UserError as e:
        return tell(e)
    except KeyboardInterrupt:
        print("tune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _run(argv: list[str]) -> int:
    if argv and argv[0] in WORD_VERBS:
        # Overrides (and torchrun's options) look like unknown options to argparse,
        # so these verbs read their words themselves.
        return importlib.import_module(VERBS[argv[0]]).run_words(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(coexist.version_text())
        return 0
    if args.verb is None:
        parser.print_help()
        return 0
    return args.func(args) or 0


def _epilog(name: str) -> str:
    """The end of `tune --help`; run as `tunelib`, it also says when `tune` is not tunelib's."""
    text = f"Run `{name} VERB --help` for a verb's options. Docs: docs/cli.md"
    # Who types `tunelib` may have met torchtune's `tune`: say so where they look first.
    note = coexist.tune_on_path_note() if name == "tunelib" else None
    return f"{text}\n\nnote: {note}" if note else text


def _reader_went_away() -> int:
    """`tune ls | head`: stop quietly, as Unix tools do when the reader of their output exits.

    Python would otherwise report the broken pipe again when it flushes stdout at exit, so
    what is left to write goes to /dev/null. Returns 141 (128 + SIGPIPE), the status a shell
    shows for such a tool.
    """
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (captured in a test); nothing to redirect
    return 141


if __name__ == "__main__":
    sys.exit(main())
