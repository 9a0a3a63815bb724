"""`tune run [TORCHRUN-OPTIONS] RECIPE --config CONFIG [OVERRIDES]`: run a recipe.

RECIPE is a name from `tune ls` or a path to a recipe file (`./my_recipe.py`). Without
torchrun options the recipe runs in this process; with any (`--nproc_per_node 2`,
`--nnodes`, `--rdzv_endpoint`, ...) the config is checked here first and the recipe is then
handed to torchrun, which starts one process per device.

Options of tune itself (anywhere before the overrides):
    --allow-module MODULE   let `_component_` import from MODULE (repeatable)

Overrides: key=value, --key=value, --key value, ~key (remove), +key=value (add).
`tune run RECIPE --help` lists every setting of RECIPE with its type, default and meaning.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import take_options
from tunelib.config import allow_module, build_config, split_config_arg
from tunelib.config.components import set_recipe_namespace
from tunelib.config.parse import run_main
from tunelib.config.schema import describe
from tunelib.errors import ConfigError, as_typed, program


def add_parser(sub) -> None:
    # Only for `tune --help`; main() hands `tune run ...` to run_words before argparse.
    sub.add_parser("run", help="run a recipe on one device, or many through torchrun", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune run` with the words after `run`; return the exit code."""
    if not words or words[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    options, words = take_options(words, ("allow-module",))
    for module in options["allow-module"]:
        allow_module(module)
    if words[0].startswith("-"):
        return _run_distributed(words)
    recipe, rest = words[0], words[1:]
    path = recipe_modules.recipe_path(recipe)
    if "-h" in rest or "--help" in rest:
        print(recipe_help(recipe, recipe_modules.load(path)))
        return 0
    config, overrides = split_config_arg(rest)
    module = recipe_modules.load(path)
    main, schema = recipe_modules.main_and_schema(module)
    cfg = build_config(registry.find_config(config), overrides, schema)
    set_recipe_namespace(vars(module))
    return run_main(main, cfg)


def recipe_help(name: str, module) -> str:
    """`tune run RECIPE --help`: what the recipe does and every setting of its schema."""
    _, schema = recipe_modules.main_and_schema(module)
    lines = [f"usage: {program()} run {name} --config CONFIG [OVERRIDES]", "", (module.__doc__ or "").strip()]
    if schema is None:
        return "\n".join(lines + ["", "This recipe declares no settings schema; its config is not checked key by key."])
    lines += ["", "Settings (top-level config keys; override with key=value):"]
    for key, kind, default, doc in describe(schema):
        lines.append(f"  {key}: {kind} (required)" if default == "required" else f"  {key}: {kind} = {default}")
        lines.append(f"      {doc}")
    lines += ["", "Keys inside a component (model.lora_rank, optimizer.lr, dataset.data_files, ...) are the arguments",
              f"of the function or class it names; `tune validate CONFIG --recipe {name}` checks them.",
              f"Shipped configs: `tune ls {name}`."]
    return "\n".join(lines)


def _run_distributed(words: list[str]) -> int:
    """Check the config here, then start torchrun with the recipe file as its script."""
    from torch.distributed.run import get_args_parser

    from tunelib.checkpoint.lock import check_free

    parser = get_args_parser()
    parser.prog = f"{program()} run"
    args = parser.parse_args(words)
    recipe = registry.find_recipe(args.training_script) if not args.training_script.endswith(".py") else None
    if recipe is not None and not recipe.distributed:
        raise ConfigError(f"recipe {recipe.name} runs on one device; run it without torchrun options")
    path = recipe_modules.recipe_path(args.training_script)
    config, overrides = split_config_arg(list(args.training_script_args))
    config_path = registry.find_config(config).resolve()
    _, schema = recipe_modules.main_and_schema(recipe_modules.load(path))
    cfg = build_config(config_path, overrides, schema)  # fail here, before any process starts
    if "output_dir" in cfg:
        # Every rank must write to the same folder, even if its name holds ${now:...}.
        overrides = [*overrides, f"output_dir={cfg.output_dir}"]
        # A run that already holds it is told here in one line, not by a failed rank 0 under
        # torchrun's report (rank 0 still takes the lock itself).
        check_free(Path(cfg.output_dir))
    args.training_script = str(path)
    args.training_script_args = ["--config", str(config_path), *overrides]
    if not args.rdzv_endpoint and str(args.nnodes) == "1":
        args.standalone = True  # a free local port, so two runs on one machine do not collide
    print(f"Running {Path(path).stem} with torchrun on {args.nproc_per_node} process(es) per node...", flush=True)
    return _torchrun(args)


def _torchrun(args) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    # Its own report of a failed rank would stand beside ours: tune says what failed, once.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    # torchrun gives each process one CPU thread unless told otherwise, and prints a banner
    # saying so; the same choice, made here, goes without the banner.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        run(args)
    except SignalException as e:
        # torchrun passed SIGTERM/SIGINT on to the ranks, which saved and stopped.
        print(f"{program()}: stopped by {e.sigval.name}; the ranks saved a checkpoint to resume from", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        # The first rank to exit with an error is the cause; the others were stopped because of it
        # (by a signal: a negative exit code).
        failed = {r: f for r, f in e.failures.items() if f.exitcode > 0} or e.failures
        rank, failure = min(failed.items(), key=lambda item: (item[1].timestamp, item[0]))
        if failure.error_file_data.get("message"):  # a one-line error the rank left for us (tunelib.errors.tell)
            print(f"{program()}: error: {as_typed(failure.message)}", file=sys.stderr)
        else:
            print(f"{program()}: error: rank {rank} failed with exit code {failure.exitcode}"
                  f" (see its output above)", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
