"""`tune cp NAME DEST`: copy a shipped recipe or config to edit it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelib import registry
from tunelib.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("cp", help="copy a recipe or config to edit", description=__doc__)
    p.add_argument("name", help="a recipe name or config name from `tune ls`")
    p.add_argument("destination", help="a file or an existing folder")
    p.add_argument("-n", "--no-clobber", action="store_true", help="do not overwrite an existing file")
    p.add_argument("--make-parents", action="store_true", help="create missing parent folders")
    p.set_defaults(func=run)


def run(args) -> int:
    source = _source(args.name)
    dest = Path(args.destination).expanduser()
    if dest.is_dir():
        dest = dest / source.name
    elif dest.suffix != source.suffix:
        dest = dest.with_suffix(source.suffix)
    if dest.exists() and args.no_clobber:
        print(f"File already exists at {dest.resolve()}, not overwriting.")
        return 0
    if not dest.parent.exists():
        if not args.make_parents:
            raise UserError(f"cannot copy to {dest}: folder {dest.parent} does not exist (add --make-parents to create it)")
        dest.parent.mkdir(parents=True)
    shutil.copyfile(source, dest)
    print(f"Copied {args.name} to {dest}")
    return 0


def _source(name: str) -> Path:
    for recipe in registry.all_recipes():
        if recipe.name == name:
            return recipe.path
    configs = registry.all_configs()
    stem = name[:-5] if name.endswith(".yaml") else name
    for candidate in (stem, stem.removesuffix("_single_device")):
        if candidate in configs:
            return configs[candidate]
    missing = registry.not_yet(stem)
    if missing:
        raise UserError(missing)
    names = [r.name for r in registry.all_recipes()] + list(configs)
    import difflib

    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"no recipe or config called '{name}'{hint}; `tune ls` lists them")
