"""`tune download REPO_ID`: fetch a model folder from the Hugging Face Hub.

The token comes from --hf-token or the HF_TOKEN environment variable and is never printed.
The folder gets `original_repo_id.json`, from which saved adapters name their base model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunelib.errors import UserError

TOKEN_PAGE = "https://huggingface.co/settings/tokens"
# Shipped configs read checkpoint_dir: /tmp/<model name>, so that is where models land.
DEFAULT_PARENT = Path("/tmp")


def add_parser(sub) -> None:
    p = sub.add_parser("download", help="download a model from the Hugging Face Hub", description=__doc__)
    p.add_argument("repo_id", help="e.g. meta-llama/Llama-3.2-1B-Instruct")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="where to put the files (default: /tmp/<model name>)")
    p.add_argument("--hf-token", default=None,
                   help="a Hugging Face token for gated or private repos (default: $HF_TOKEN)")
    p.add_argument("--ignore-patterns", nargs="+", action="extend", default=None, metavar="PATTERN",
                   help='skip files matching these globs, e.g. "original/consolidated.00.pth"')
    p.set_defaults(func=run)


def run(args) -> int:
    from huggingface_hub import snapshot_download

    repo_id = args.repo_id
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"'{repo_id}' is not a repo id; write it as OWNER/NAME, e.g. meta-llama/Llama-3.2-1B")
    out = args.output_dir or DEFAULT_PARENT / repo_id.split("/")[1]
    token = args.hf_token or os.environ.get("HF_TOKEN") or None
    if args.ignore_patterns:
        print(f"Ignoring files matching: {', '.join(args.ignore_patterns)}")
    try:
        folder = snapshot_download(repo_id, local_dir=out, token=token, ignore_patterns=args.ignore_patterns)
    except Exception as e:  # noqa: BLE001 - mapped to one line below; anything else re-raised
        raise _explain(e, repo_id, token is not None) from None
    (Path(folder) / "original_repo_id.json").write_text(json.dumps({"repo_id": repo_id}) + "\n")
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and ".cache" not in p.parts)
    print(f"Downloaded {repo_id} to {folder} ({len(files)} files)")
    return 0


def _explain(error: Exception, repo_id: str, has_token: bool) -> Exception:
    """Turn a huggingface_hub error into one line that says what to do."""
    from huggingface_hub import errors

    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, errors.GatedRepoError) or status in (401, 403):
        how = ("your token has no access to it: request access on its page"
               if has_token else f"pass a token with --hf-token or HF_TOKEN (create one at {TOKEN_PAGE})")
        return UserError(f"{repo_id} is gated or private; {how}: https://huggingface.co/{repo_id}")
    if isinstance(error, errors.RepositoryNotFoundError) or status == 404:
        return UserError(f"repository '{repo_id}' not found on the Hugging Face Hub; check the name "
                         "(private repos also need --hf-token)")
    if _is_network(error):
        return UserError("cannot reach the Hugging Face Hub (no network?); set HF_ENDPOINT for a mirror, "
                         "or copy the model folder to this machine")
    return error


def _is_network(error: BaseException) -> bool:
    from huggingface_hub import errors

    seen = error
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError, errors.OfflineModeIsEnabled)) or name in (
            "ConnectError", "ConnectTimeout", "LocalEntryNotFoundError", "IncompleteSnapshotError"
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
