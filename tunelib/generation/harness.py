"""A tunelib model as lm-evaluation-harness sees it, and the evaluation run itself.

    lm = TunelibLM(model, tokenizer, batch_size=8)
    results = evaluate(lm, ["hellaswag"], limit=100)

`TunelibLM` answers the harness's three kinds of request with our model and tokenizer:
log-likelihoods of continuations (batched), rolling log-likelihoods of whole texts (for
perplexity) and generation until a stop string (one request at a time, through the KV
cache). This module imports lm-eval; `tunelib.generation` does not import this module, so
lm-eval stays optional (`pip install 'tunelib[eval]'`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from tunelib.errors import ConfigError, DataError
from tunelib.generation.generator import Generator
from tunelib.generation.sampling import Sampling
from tunelib.generation.stream import TextStream
from tunelib.hub import go_offline_unless_reachable


class TunelibLM(TemplateLM):
    """lm-eval's `TemplateLM` over a tunelib `CausalLM` and `Tokenizer`.

    `batch_size` applies to log-likelihood requests; `max_seq_length` caps the context
    (default: the model's); `max_gen_toks` is the generation length when a task gives none.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_seq_length: int | None = None,
                 max_gen_toks: int = 256):
        super().__init__()
        self.model, self._tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.max_length = min(max_seq_length or 1 << 30, model.config.max_position_embeddings)
        self.max_gen_toks = max_gen_toks
        self._device = next(model.parameters()).device
        self.generator = Generator(model, context=self.max_length)

    # -- tokens -----------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self._tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        # What an empty context is conditioned on: BOS where the model has one, as HFLM does.
        return self._tokenizer.bos_id if self._tokenizer.bos_id is not None else self._tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # As lm-eval's HFLM: no BOS unless asked; a rendered chat template carries its own.
        return self._tokenizer.encode(string, add_bos=bool(add_special_tokens), add_eos=False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode(tokens)

    @property
    def tokenizer_name(self) -> str:
        return f"tunelib:{self._tokenizer.fingerprint}"

    def chat_template(self, chat_template: bool | str = False) -> str:
        return self._tokenizer.chat_format

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._tokenizer.render_messages(chat_history, add_generation_prompt=add_generation_prompt)

    # -- log-likelihoods --------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """For each (key, context ids, continuation ids): (sum of log p(continuation), is it the greedy one)."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[Any] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            scored = self._score([(requests[i][1], requests[i][2]) for i in chunk])
            for i, answer in zip(chunk, scored):
                results[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return results

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One batch: right-padded inputs, which a causal model reads as if unpadded."""
        inputs = [(context + continuation)[-(self.max_length + 1):][:-1] for context, continuation in pairs]
        width = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long)  # (B, T); the padding id does not matter
        for row, ids in enumerate(inputs):
            batch[row, :len(ids)] = torch.tensor(ids)
        hidden = self.model.hidden(batch.to(self._device))  # (B, T, hidden)
        out = []
        for row, ((_, continuation), ids) in enumerate(zip(pairs, inputs)):
            n = len(continuation)
            logits = self.model.logits(hidden[row, len(ids) - n:len(ids)]).float()  # (n, vocab)
            logprobs = F.log_softmax(logits, dim=-1)
            target = torch.tensor(continuation, device=logits.device)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            greedy = bool((logits.argmax(dim=-1) == target).all())
            out.append((total, greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, in windows of the context length (for perplexity)."""
        results = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(None, context, continuation) for context, continuation in windows])
            total = sum(logprob for logprob, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    # -- generation -------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate after each context until a stop string, the end of turn or max_gen_toks."""
        results = []
        for request in requests:
            context, kwargs = request.args
            text = self._generate(context, dict(kwargs or {}))
            self.cache_hook.add_partial("generate_until", (context, kwargs), text)
            results.append(text)
        return results

    def _generate(self, context: str, kwargs: dict) -> str:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        sampling = _sampling(kwargs)
        prompt = self.tok_encode(context) or [self.prefix_token_id]
        prompt = prompt[-max(1, self.max_length - max_new):]  # keep the end of a long context, as HFLM does
        stream = TextStream(self._tokenizer)
        rng = torch.Generator(device=self._device).manual_seed(1234)
        for token in self.generator.stream(prompt, max_new_tokens=max_new, stop_tokens=self._tokenizer.stop_tokens,
                                           sampling=sampling, generator=rng):
            stream.push(token)
            if _cut(stream.text, until) is not None:
                break
        stream.flush()
        cut = _cut(stream.text, until)
        return stream.text if cut is None else stream.text[:cut]


def _sampling(kwargs: dict) -> Sampling:
    """lm-eval's generation keywords: greedy unless do_sample (or a temperature > 0) asks otherwise."""
    temperature = float(kwargs.get("temperature", 0.0) or 0.0)
    if not kwargs.get("do_sample", temperature > 0):
        return Sampling()
    return Sampling(temperature or 1.0, kwargs.get("top_k"), kwargs.get("top_p"))


def _cut(text: str, until: list[str]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    found = [text.find(stop) for stop in until if stop and stop in text]
    return min(found) if found else None


# ---------------------------------------------------------------- the run


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager: only the tasks in `include_path` when they cover `tasks` (fast),
    else every built-in task as well.

    Raises:
        ConfigError: a task name no one knows (with the closest names).
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise ConfigError(f"include_path {include_path} is not a folder of task YAML files")
    path = str(Path(include_path).expanduser()) if include_path else None
    manager = TaskManager(include_path=path, include_defaults=False) if path else None
    if manager is None or not all(task in manager.all_tasks for task in tasks):
        manager = TaskManager(include_path=path)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        close = difflib.get_close_matches(unknown[0], manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown lm-eval task {unknown[0]!r}{hint}; `lm-eval ls tasks` lists them, and "
                          "include_path=DIR adds your own task YAMLs")
    return manager


def evaluate(lm: TunelibLM, tasks: list[str], *, manager, limit: int | float | None = None,
             num_fewshot: int | None = None, apply_chat_template: bool = False, seed: int = 1234) -> dict:
    """Run lm-eval's `simple_evaluate` on `lm`; returns its results dict.

    Without a connection to the Hugging Face Hub it runs offline: tasks whose data is cached
    (or local) run, and the others fail at once instead of after the Hub's retries.

    Raises:
        DataError: a task's data could not be downloaded.
    """
    import lm_eval

    offline = go_offline_unless_reachable()
    try:
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            apply_chat_template=apply_chat_template, log_samples=False, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except ConnectionError as e:
        fix = ("offline, only cached or local data can be used: run once with network (the datasets cache then "
               "keeps the data), or point the task's YAML at local files (dataset_path: json, "
               "dataset_kwargs.data_files)") if offline else "check the network and the task's dataset_path"
        raise DataError(f"cannot load the data of lm-eval task(s) {', '.join(tasks)}: "
                        f"{str(e).splitlines()[0]}; {fix}") from None
