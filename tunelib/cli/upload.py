"""`tune upload FOLDER REPO_ID [--public] [--token T]`: a trained model to the Hugging Face Hub.

FOLDER is a model folder, an adapter folder, or a run's output folder (its final/ is
uploaded). The repo is created private unless --public says otherwise (an existing repo
keeps its visibility). A model card (README.md) is written from the run's config.yaml,
summary.json and adapter_config.json, unless FOLDER already has a README.md, which is
uploaded as it is. The token is --token, else your login (HF_TOKEN, or `hf auth login`);
it is never printed or written anywhere.

    tune upload out/final/merged me/llama3-8b-alpaca
"""

from __future__ import annotations

import argparse

from tunelib.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("upload", help="upload a trained model to the Hugging Face Hub (private by default)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER", help="a model folder, an adapter folder or a run's output folder")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo, owner/name")
    visibility = p.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="public", action="store_false", help="a private repo (default)")
    visibility.add_argument("--public", dest="public", action="store_true", help="a public repo")
    p.add_argument("--token", default=None, help="a Hub token with write access (default: HF_TOKEN or your login)")
    p.add_argument("--message", default=None, help="the commit message")
    p.set_defaults(func=run, public=False)


def run(args) -> int:
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    from tunelib.export.upload import upload_folder

    try:
        done = upload_folder(args.folder, args.repo_id, public=args.public, token=args.token, message=args.message)
    except LocalTokenNotFoundError:
        raise UserError("not logged in to the Hugging Face Hub: pass --token, set HF_TOKEN, or run "
                        "`hf auth login`") from None
    except HfHubHTTPError as e:
        if getattr(e.response, "status_code", None) == 401:
            raise UserError(f"the Hub did not accept your token for {args.repo_id}: pass --token, set HF_TOKEN, "
                            "or run `hf auth login` with a token that can write") from None
        raise UserError(f"the Hub refused the upload to {args.repo_id}: {_first_line(e)}") from None
    visibility = "private" if done.private else "public"
    print(f"Uploaded {len(done.files)} files to {done.url} ({visibility}, commit {done.commit[:10]})", flush=True)
    return 0


def _first_line(error: Exception) -> str:
    # The Hub's messages carry the request id on further lines; the first says what was wrong.
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
