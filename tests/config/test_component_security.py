"""A `_component_` string cannot reach code outside the allowed modules (issue 17, point 1).

The allow-list once checked only the string's prefix, so `torch.os.system` ran a shell
command and `tunelib.checkpoint.atomic.shutil.rmtree` deleted a folder. Each way around it
is a case here: a module reached as an attribute, a name re-exported from another module,
builtins, chains through objects, and the parts of allowed packages that run code.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tunelib.config.components import resolve, set_recipe_namespace
from tunelib.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# A package the user allowed (TUNELIB_ALLOW_MODULES=userpkg) that imports things it should not hand out.
USER_PACKAGE = '''
import os
import subprocess as sp
from builtins import eval as evaluate
from os import system
from shutil import rmtree as tidy

class Runner:
    os = os
    def run(self, command):
        return os.system(command)
    @classmethod
    def build(cls):
        return cls()

RUNNER = Runner()
run_now = RUNNER.run
append_to = [].append

def make(x=1):
    return x
'''


@pytest.fixture
def userpkg(tmp_path, monkeypatch):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg/__init__.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "userpkg")
    yield "userpkg"
    sys.modules.pop("userpkg", None)


BYPASSES = {
    # a module reached as an attribute of an allowed one
    "torch.os.system": "not in an allowed module",
    "torch.nn.functional.torch.os.system": "torch.nn.functional.torch is the module torch",
    "tunelib.checkpoint.atomic.shutil.rmtree": "tunelib.checkpoint.atomic.shutil is the module shutil",
    "tunelib.checkpoint.atomic.os.system": "tunelib.checkpoint.atomic.os is the module os",
    # parts of torch that run commands, load pickles or compile code
    "torch.utils.collect_env.run": "refused: it can load or run code",
    "torch.serialization.load": "refused: it can load or run code",
    "torch.hub.load": "refused: it can load or run code",
    "torch.load": "refused: it can load or run code",
    # tunelib's own machinery: widening the allow-list, running another recipe
    "tunelib.config.components.allow_module": "refused",
    "tunelib.cli.main.main": "refused",
    # builtins
    "builtins.eval": "refused",
    "builtins.exec": "refused",
}

USER_BYPASSES = {
    "userpkg.os.system": "userpkg.os is the module os",
    "userpkg.sp.run": "userpkg.sp is the module subprocess",
    "userpkg.system": "defined in posix",  # a re-exported function: where it is defined decides
    "userpkg.tidy": "defined in shutil",
    "userpkg.evaluate": "defined in builtins, which is refused",
    "userpkg.RUNNER.run": "goes through userpkg.RUNNER, a Runner object",  # a getattr chain through an object
    "userpkg.run_now": "Python cannot tell which module defines it",  # a method bound to an object
    "userpkg.append_to": "Python cannot tell which module defines it",
    "userpkg.Runner.os.system": "userpkg.Runner.os is the module os",
}


@pytest.mark.parametrize("path", list(BYPASSES))
def test_allowed_prefix_does_not_reach_other_code(path):
    with pytest.raises(ConfigError, match=BYPASSES[path].replace("(", r"\(")):
        resolve(path, "loss._component_")


@pytest.mark.parametrize("path", list(USER_BYPASSES))
def test_an_allowed_user_module_does_not_hand_out_what_it_imported(userpkg, path):
    with pytest.raises(ConfigError, match=USER_BYPASSES[path]):
        resolve(path)


def test_what_an_allowed_module_defines_still_builds(userpkg):
    import torch

    assert resolve("userpkg.make") is sys.modules["userpkg"].make
    assert resolve("userpkg.Runner").__name__ == "Runner"
    assert isinstance(resolve("userpkg.Runner.build")(), sys.modules["userpkg"].Runner)  # a classmethod
    assert resolve("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve("torch.nn.CrossEntropyLoss") is torch.nn.CrossEntropyLoss
    assert resolve("tunelib.data.alpaca_dataset").__name__ == "alpaca_dataset"


def test_a_module_swapped_into_sys_modules_is_refused(monkeypatch):
    import os

    monkeypatch.setitem(sys.modules, "tunelib.fake_alias", os)
    with pytest.raises(ConfigError, match="tunelib.fake_alias is the module os"):
        resolve("tunelib.fake_alias.system")


def test_bare_names_are_only_what_the_recipe_file_defines():
    import os

    def local_builder(x=1):
        return x

    set_recipe_namespace({"__name__": __name__, "local_builder": local_builder, "system": os.system, "os": os})
    try:
        assert resolve("local_builder") is local_builder
        for name in ("system", "os", "missing"):
            with pytest.raises(ConfigError, match=f"defines no class or function '{name}'"):
                resolve(name)
    finally:
        set_recipe_namespace({})


@pytest.mark.parametrize("verb", ["run", "validate"])
def test_the_reported_command_runs_nothing(tune, tmp_path, monkeypatch, verb):
    """The issue's own command line: `tune run ... loss._component_=torch.os.system '+loss.command=...'`."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "out.txt"
    args = ["loss._component_=torch.os.system", f"+loss.command=id > {marker}"]
    if verb == "run":
        args = ["run", "lora_finetune_single_device", "--config", "llama3_2/1B_lora_tunelib",
                f"output_dir={tmp_path / 'out'}", f"checkpoint_dir={tmp_path}", *args]
    else:
        args = ["validate", "llama3_2/1B_lora_tunelib", *args]
    code, out, err = tune(*args)
    assert code == 2 and "loss._component_: 'torch.os.system'" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_shared_yaml_cannot_delete_a_folder(tune, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    config = tmp_path / "shared.yaml"
    config.write_text((REPO / "recipes/configs/llama3_2/1B_lora_tunelib.yaml").read_text()
                      + f"\nloss:\n  _component_: tunelib.checkpoint.atomic.shutil.rmtree\n  path: {victim}\n")
    code, _, err = tune("validate", str(config))
    assert code == 2 and "is the module shutil" in err
    code, _, err = tune("run", "lora_finetune_single_device", "--config", str(config), f"checkpoint_dir={tmp_path}",
                        f"output_dir={tmp_path / 'out'}")
    assert code == 2 and "is the module shutil" in err
    assert (victim / "notes.txt").read_text() == "keep me"
