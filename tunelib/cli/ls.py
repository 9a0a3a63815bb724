"""`tune ls [FILTER]`: every recipe with its configs, derived from the files on disk."""

from __future__ import annotations

from tunelib import registry

WIDTH = 40
LEGEND = "docs/configs.md"


def add_parser(sub) -> None:
    p = sub.add_parser("ls", help="list recipes and their configs", description=__doc__)
    p.add_argument("filter", nargs="?", default=None,
                   help="show only recipes or configs whose name contains this text")
    p.set_defaults(func=run)


def run(args) -> int:
    text = args.filter
    rows = []
    for recipe in registry.all_recipes():
        configs = registry.configs_of(recipe)
        if text and text not in recipe.name:
            configs = [c for c in configs if text in c]
            if not configs:
                continue
        rows.append((recipe.name, configs or ["<>"]))
    if not rows:
        print(f"No recipe or config matches '{text}'." if text else "No recipes are installed.")
        return 0
    print(f"{'RECIPE':<{WIDTH}} CONFIG")
    marked = False
    for name, configs in rows:
        for i, config in enumerate(configs):
            origin = registry.torchtune_origin(config)
            marked = marked or bool(origin)
            mark = f"{'':<{max(1, WIDTH - len(config))}}({origin})" if origin else ""
            print(f"{name if i == 0 else '':<{WIDTH}} {config}{mark}")
    if marked:
        print(f"\n(torchtune ...): torchtune's name and torchtune's values (data, lr, schedule, LoRA, batch, "
              f"memory options); unmarked configs are tunelib's own choices ({LEGEND}).")
    return 0
