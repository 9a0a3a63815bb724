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

Bad input prints one line, `tune: error: ...`, and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tunelib.errors import UserError

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
}

WORD_VERBS = ("run", "validate", "cat", "preview")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (cheap: no verb imports torch to build it)."""
    parser = argparse.ArgumentParser(
        prog="tune",
        description="Fine-tune large language models from YAML recipes.",
        epilog="Run `tune VERB --help` for a verb's options. Docs: docs/cli.md",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERBS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `tune` with `argv` (default: sys.argv[1:]) and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in WORD_VERBS:
            # Overrides (and torchrun's options) look like unknown options to argparse,
            # so these verbs read their words themselves.
            return importlib.import_module(VERBS[argv[0]]).run_words(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help()
            return 0
        return args.func(args) or 0
    except UserError as e:
        print(f"tune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
