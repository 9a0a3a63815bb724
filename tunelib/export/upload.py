"""A trained model folder to a repo on the Hugging Face Hub, with a model card, in one commit.

    upload_folder("out/final/merged", "me/my-model")            # private unless public=True

The folder may be an HF model folder, a PEFT adapter folder, or a run's output_dir (its
`final/` is uploaded). The card (README.md: YAML front matter with base_model, library_name
and tags; then the method, the data, the results and the run's config) is written from the
run's files when they are there: config.yaml and summary.json beside the model or up to two
folders above it, adapter_config.json in it. A README.md already in the folder is the
user's: it is uploaded as it is. The token comes from `token`, else from the usual login
(HF_TOKEN, or the cached token of `hf auth login`); it is handed to huggingface_hub only,
never printed or written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunelib.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
METHODS = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "qdora": "QDoRA", "full-finetune": "full fine-tuning"}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_SKIP = re.compile(r"(^|/)\.|\.tmp-\d+|(^|/)__pycache__/")  # hidden files, unfinished writes


@dataclass
class Uploaded:
    """Where the model went: the repo's URL, the commit, the files sent."""

    url: str
    commit: str
    files: list[str]
    private: bool


def upload_folder(folder: str | Path, repo_id: str, *, public: bool = False, token: str | None = None,
                  message: str | None = None) -> Uploaded:
    """Create `repo_id` (private unless `public`; kept if it exists) and commit the model folder to it.

    Raises:
        ConfigError: a repo id that is not `owner/name`.
        CheckpointError: the folder is missing or holds no model or adapter.
        huggingface_hub's errors (not logged in, no write access) pass through, for the CLI
        to turn into one line.
    """
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"repo id {repo_id!r} must look like owner/name (e.g. me/llama3-lora)")
    model_dir = model_folder(folder)
    files = upload_files(model_dir)
    card = None if (model_dir / "README.md").is_file() else model_card(model_dir, repo_id).encode()
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in files]
    if card is not None:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
        files = [*files, "README.md"]
    commit = api.create_commit(repo_id, operations, commit_message=message or "Upload model trained with tunelib",
                               repo_type="model")
    return Uploaded(str(repo), commit.oid, files, not public)


def model_folder(folder: str | Path) -> Path:
    """The folder to upload: `folder` itself, or a run's `final/` when given its output_dir.

    Raises:
        CheckpointError: the folder is missing or holds neither config.json nor adapter_config.json.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"folder {path} does not exist; pass a model folder, an adapter folder or a "
                              "run's output folder")
    for candidate in (path, path / "final"):
        if (candidate / "config.json").is_file() or (candidate / ADAPTER_CONFIG).is_file() or (
                (candidate / "merged").is_dir() or (candidate / "adapter").is_dir()):
            return candidate
    raise CheckpointError(f"{path} holds no model (config.json) or adapter ({ADAPTER_CONFIG}) to upload")


def upload_files(model_dir: Path) -> list[str]:
    """Paths (relative, `/`-separated) of the files to upload: all but hidden ones and unfinished writes."""
    names = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    return [n for n in names if not _SKIP.search(n)]


def model_card(model_dir: Path, repo_id: str) -> str:
    """README.md for the Hub: YAML front matter, then what was trained, on what, and how to load it."""
    run = _run_files(model_dir)
    adapter = _read_json(model_dir / ADAPTER_CONFIG) or _read_json(model_dir / "adapter" / ADAPTER_CONFIG)
    is_adapter = (model_dir / ADAPTER_CONFIG).is_file()
    base = _base_model(adapter, run.get("config", ""))
    hub_base = base if base and REPO_ID.match(base) and not Path(base).expanduser().exists() else None
    method = _method(adapter, run.get("config", ""))
    lines = ["---"]
    if hub_base:
        lines.append(f"base_model: {hub_base}")
    lines += [f"library_name: {'peft' if is_adapter else 'transformers'}", "pipeline_tag: text-generation",
              "tags:", "- tunelib", *([f"- {method}"] if method else [])]
    if hub_base:
        lines.append(f"- base_model:{'adapter' if is_adapter else 'finetune'}:{hub_base}")
    # A local base folder is named, not located: the card is public to whoever can see the repo.
    named = f"`{hub_base or Path(base).name}`" if base else "its base model"
    lines += ["---", "", f"# {repo_id.split('/')[1]}", "",
              f"Fine-tuned from {named} with tunelib{f' ({METHODS[method]})' if method else ''}.", ""]
    lines += _data_lines(run.get("config", "")) + _result_lines(run.get("summary"))
    lines += _usage_lines(repo_id, is_adapter)
    if run.get("config"):
        lines += ["## Training config", "", "```yaml", run["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def _run_files(model_dir: Path) -> dict:
    """config.yaml (text) and summary.json (dict) of the run that wrote `model_dir`, if found nearby."""
    found: dict = {}
    for folder in (model_dir, model_dir.parent, model_dir.parent.parent):
        if "config" not in found and (folder / "config.yaml").is_file():
            found["config"] = (folder / "config.yaml").read_text(encoding="utf-8")
        if "summary" not in found and (folder / "summary.json").is_file():
            found["summary"] = _read_json(folder / "summary.json")
    return found


def _base_model(adapter: dict, config: str) -> str | None:
    """The base model's Hub id when it can be told (the folder `tune download` wrote records it)."""
    named = adapter.get("base_model_name_or_path") or _yaml_value(config, "checkpoint_dir")
    if not named:
        return None
    recorded = _read_json(Path(named).expanduser() / "original_repo_id.json").get("repo_id")
    return recorded or named


def _method(adapter: dict, config: str) -> str | None:
    """The tag of the training method (a key of METHODS), or None when nothing says."""
    def says(key: str) -> bool:
        return bool(re.search(rf"^\s*{key}:\s*[Tt]rue\b", config, re.MULTILINE))

    if adapter or re.search(r"^\s*lora_rank:", config, re.MULTILINE):
        dora = adapter.get("use_dora") or says("use_dora")
        return ("q" if says("quantize_base") else "") + ("dora" if dora else "lora")
    return "full-finetune" if config else None


def _data_lines(config: str) -> list[str]:
    dataset = _yaml_block(config, "dataset")
    if not dataset:
        return []
    return ["## Data", "", "```yaml", dataset.rstrip(), "```", ""]


def _result_lines(summary: dict | None) -> list[str]:
    if not summary:
        return []
    rows = [("steps", summary.get("steps")), ("trained tokens", summary.get("trained_tokens")),
            ("first loss", summary.get("first_loss")), ("last loss", summary.get("last_loss")),
            ("validation loss", summary.get("val_loss"))]
    table = [f"| {k} | {round(v, 4) if isinstance(v, float) else v} |" for k, v in rows if v is not None]
    return ["## Results", "", "| | |", "|---|---|", *table, ""] if table else []


def _usage_lines(repo_id: str, is_adapter: bool) -> list[str]:
    if is_adapter:
        code = ["from peft import AutoPeftModelForCausalLM",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")']
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")']
    return ["## Use it", "", "```python", *code, "```", ""]


def _yaml_value(config: str, key: str) -> str | None:
    """A top-level or nested `key: value` of config.yaml's text (the first one)."""
    match = re.search(rf"^\s*{re.escape(key)}:\s*['\"]?([^'\"\n#]+?)['\"]?\s*(#.*)?$", config, re.MULTILINE)
    return match.group(1).strip() if match else None


def _yaml_block(config: str, key: str) -> str | None:
    """The top-level `key:` of config.yaml with its indented lines."""
    lines = config.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{key}:"):
            block = [line]
            for more in lines[i + 1:]:
                if more and not more.startswith((" ", "-", "\t")):
                    break
                block.append(more)
            return "\n".join(block)
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
