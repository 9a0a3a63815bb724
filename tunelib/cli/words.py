"""Split a verb's command-line words into tune's own options and config overrides.

Verbs that take overrides (`run`, `validate`, `cat`) cannot use argparse for them, since an
override such as `--model.lora_rank=64` looks like an option argparse does not know.
"""

from __future__ import annotations

from tunelib.errors import UserError


def take_options(words: list[str], names: tuple[str, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """Remove `--name VALUE` / `--name=VALUE` for each of `names`; return (values by name, rest).

    Raises:
        UserError: an option is given without a value.
    """
    found: dict[str, list[str]] = {n: [] for n in names}
    rest, i = [], 0
    while i < len(words):
        word = words[i]
        flag, eq, value = word.partition("=")
        name = flag[2:] if flag.startswith("--") else None
        if name in found:
            if not eq:
                if i + 1 >= len(words):
                    raise UserError(f"{flag} needs a value")
                value, i = words[i + 1], i + 1
            found[name].append(value)
        else:
            rest.append(word)
        i += 1
    return found, rest


def config_and_overrides(words: list[str], verb: str) -> tuple[str, list[str]]:
    """The config (first word, or `--config X`) and the overrides after it.

    Raises:
        UserError: no config is given.
    """
    options, rest = take_options(words, ("config",))
    if options["config"]:
        return options["config"][-1], rest
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        raise UserError(f"`tune {verb}` needs a config: a name from `tune ls` or a YAML path")
    return rest[0], rest[1:]
