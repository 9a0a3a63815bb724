"""`tune migrate FILE [-o OUT]`: rewrite a torchtune config into tunelib's native form.

tunelib runs torchtune's files unchanged; this writes the same config the way tunelib's own
configs are written (tunelib `_component_` paths, one top-level `checkpoint_dir`, torchtune's
keys that only restate the model folder left out), keeping comments and key order. Each
change is printed. Without -o the new YAML goes to stdout and the changes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunelib.config.migrate import migrate
from tunelib.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("migrate", help="rewrite a torchtune config in tunelib's form", description=__doc__)
    p.add_argument("file", help="a torchtune YAML config")
    p.add_argument("-o", "--output", help="where to write the result (must not exist yet); default: stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    """Rewrite `args.file`; print the changes; return 0.

    Raises:
        ConfigError: the file is missing or not a YAML mapping, names a torchtune component
            with no tunelib equivalent, or the output exists already.
    """
    source = Path(args.file).expanduser()
    if not source.is_file():
        raise ConfigError(f"{source} does not exist; give the path of a torchtune YAML config")
    result = migrate(source.read_text(), source.name)
    lines = [f"  {change}" for change in result.changes] or ["  nothing to change: it is in tunelib's form already"]
    if args.output is None:
        sys.stdout.write(result.text)
        print(f"{source}:", *lines, sep="\n", file=sys.stderr)
        return 0
    out = Path(args.output).expanduser()
    if out.exists():
        raise ConfigError(f"{out} exists already; give -o a new file (the original is never overwritten)")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {out.parent} does not exist")
    out.write_text(result.text)
    print(f"Wrote {out} from {source}:", *lines, sep="\n")
    return 0
