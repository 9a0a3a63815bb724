r"""`tune sweep RECIPE --config CONFIG [OVERRIDES] --grid KEY=V1,V2 [--grid ...]`: one run per point.

    tune sweep lora_finetune_single_device --config demo/tiny_lora \
        --grid model.lora_rank=4,16 --grid optimizer.lr=1e-3,3e-3 --output-dir /tmp/rank-lr

Each point (every combination of the --grid values, or --random N of them) runs `tune run` in
DIR/<short name>/ (e.g. `lora_rank-4_lr-1e-3`) with its overrides after yours, and writes its
resolved config.yaml, metrics.jsonl and summary.json there; its output goes to run.log.
DIR/sweep.json lists the points with their status (pending, running, done, failed, stopped).
Every point's config is checked first, so a misspelled key stops the sweep before any run.

Options:
    --grid KEY=V1,V2    values of one setting (repeatable); commas inside [..] belong to a value
    --random N          N points drawn from the grid instead of all of them (--seed S, default 0)
    --output-dir DIR    the sweep's folder (default: sweep-<time> beside the config's output_dir)
    --parallel K        K runs at a time (default 1); with GPUs each gets its own share of them
                        through CUDA_VISIBLE_DEVICES
    --allow-module M    let `_component_` import from M, as for `tune run`
    --dry-run           check every point's config and list the points; run and write nothing

Stop it with Ctrl-C: the running points save a checkpoint and stop. The same command (with
--output-dir) resumes: finished points are skipped, stopped ones continue from their
checkpoint, failed ones are tried again. A failed point is recorded and the others go on; the
exit code is 1 when any failed. `tune compare DIR` tabulates the results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import take_options
from tunelib.config import allow_module, build_config, split_config_arg
from tunelib.errors import ConfigError, UserError, program
from tunelib.experiments import grid as grids
from tunelib.experiments import sweep as sweeps

OPTIONS = ("grid", "random", "seed", "output-dir", "parallel", "allow-module")


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("sweep", help="run a recipe once per point of a grid of settings", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune sweep` with the words after `sweep`; return the exit code."""
    if not words or words[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    dry_run = "--dry-run" in words
    options, words = take_options([w for w in words if w != "--dry-run"], OPTIONS)
    for module in options["allow-module"]:
        allow_module(module)
    if words[0].startswith("-"):
        raise UserError(f"`{program()} sweep` needs a recipe first: {program()} sweep RECIPE --config CONFIG --grid KEY=V1,V2")
    recipe, (config, overrides) = words[0], split_config_arg(words[1:])
    grid = grids.parse_grid(options["grid"])
    points = grids.plan(grid, _count(options, "random", None, 1), _count(options, "seed", 0, 0))
    parallel = _count(options, "parallel", 1, 1)
    config_path = registry.find_config(config).resolve()
    folder, configs = _check_points(recipe, config_path, overrides, grid, points, options["output-dir"])
    if dry_run:
        print(f"{len(points)} point(s), each checked; they would run in {folder}:")
        print("\n".join(f"  {point.name}: {' '.join(point.words())}" for point in points))
        return 0
    with sweeps.lock(folder):
        sweep = sweeps.open_sweep(folder, recipe, str(config_path), overrides, grid, points)
        for point, cfg in zip(points, configs):
            if not (folder / point.name / "config.yaml").exists():
                sweeps.write_config(folder / point.name, cfg)
        return _run(sweep, points, parallel, options["allow-module"])


def _count(options: dict, name: str, default: int | None, least: int) -> int | None:
    """The last `--name N` as an integer of at least `least`, or `default`.

    Raises:
        UserError: not a whole number, or too small.
    """
    if not options[name]:
        return default
    text = options[name][-1]
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--{name} {text}: give a whole number") from None
    if value < least:
        raise UserError(f"--{name} {value}: give {least} or more")
    return value


def _check_points(recipe: str, config_path: Path, overrides: list[str], grid: dict, points: list,
                  output_dir: list[str]) -> tuple[Path, list]:
    """Check every point's config as `tune run` would (unknown keys get "did you mean").

    Returns:
        The sweep's folder, and each point's resolved config.

    Raises:
        ConfigError: a grid key given as an override too, or a point whose config is refused.
    """
    given = {word.lstrip("-+~").split("=", 1)[0] for word in overrides}
    both = sorted(given & set(grid))
    if both:
        raise ConfigError(f"{', '.join(both)} is both an override and a --grid key; give it once")
    _, schema = recipe_modules.main_and_schema(recipe_modules.load(recipe_modules.recipe_path(recipe)))
    base = build_config(config_path, overrides, schema)
    folder = Path(output_dir[-1]).expanduser() if output_dir else _default_folder(base)
    folder, configs = folder.resolve(), []
    for point in points:
        try:
            configs.append(build_config(config_path, [*overrides, *point.words(), f"output_dir={folder / point.name}"],
                                        schema))
        except ConfigError as e:
            raise ConfigError(f"point {point.name}: {e}") from None
    return folder, configs


def _default_folder(cfg) -> Path:
    """sweep-<time> beside where the config would write a single run."""
    if "output_dir" not in cfg or not cfg.output_dir:
        raise ConfigError("the config has no output_dir; give the sweep's folder with --output-dir DIR")
    return Path(cfg.output_dir).expanduser().parent / time.strftime("sweep-%Y%m%d-%H%M%S")


def _run(sweep: sweeps.Sweep, points: list, parallel: int, allowed: list[str]) -> int:
    """Run the points not yet done; report; return 0, 1 (a point failed) or 128 + the signal that stopped it."""
    names = {point.name for point in points}
    entries = [e for e in sweep.points if e["name"] in names]
    done = [e for e in entries if sweeps.is_done(e, sweep.folder)]
    todo = [e for e in entries if e not in done]
    for entry in done:
        entry["status"] = "done"  # also one that finished while the sweep itself was killed
    for entry in todo:
        entry["status"] = "pending"
    sweep.save()
    print(f"Sweep of {len(entries)} point(s) in {sweep.folder}" +
          (f" ({len(done)} done before, skipped)" if done else ""), flush=True)
    if not todo:
        print(f"Nothing left to run. Compare them: {program()} compare {sweep.folder}")
        return 0

    def command(entry: dict, resume: bool) -> list[str]:
        extra = [f"--allow-module={m}" for m in allowed]
        point = [f"{key}={value}" for key, value in entry["overrides"].items()]
        return [sys.executable, "-m", "tunelib.cli.main", "run", sweep.recipe, "--config", sweep.config, *extra,
                *sweep.overrides, *point, f"output_dir={sweep.folder / entry['name']}",
                *(["resume_from_checkpoint=True"] if resume else [])]

    gpus = sweeps.visible_gpus()
    stopped = sweeps.Runner(sweep, command, parallel, gpus, say=lambda line: print(line, flush=True)).run(todo)
    return _report(sweep, entries, stopped)


def _report(sweep: sweeps.Sweep, entries: list[dict], stopped: int | None) -> int:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    print(f"Sweep: {', '.join(f'{n} {status}' for status, n in counts.items())} (in {sweep.path})")
    if stopped is not None or counts.get("pending") or counts.get("stopped"):
        print(f"Resume: the same command with --output-dir {sweep.folder}")
    print(f"Compare them: {program()} compare {sweep.folder}", flush=True)
    if stopped is not None:
        return 128 + int(stopped)
    return 1 if counts.get("failed") else 0
