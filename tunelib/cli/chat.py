"""`tune chat CHECKPOINT_DIR [--adapter DIR]`: talk with a model in the terminal.

The conversation is kept in the model's chat format and every answer is streamed as it is
generated; earlier turns stay in the KV cache, so a long chat does not recompute them.
Ctrl-C stops an answer; Ctrl-C or Ctrl-D at the prompt (or /exit) ends the chat.
/clear starts a new conversation. CHECKPOINT_DIR is any folder `tune run generate` takes.
"""

from __future__ import annotations

import argparse
import sys

HELP = "Ctrl-D or /exit to quit, /clear to start over, Ctrl-C stops an answer."


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir", help="a model folder (HF, a fine-tune's output, a quantized folder)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a LoRA/DoRA (PEFT) or LLaMA-Adapter folder")
    p.add_argument("--system", default=None, help="a system message that starts the conversation")
    p.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer (default: 512)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default: 0.6)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.9, help="sample from the top tokens with this much probability (default: 0.9)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer folder (default: the model folder)")
    p.add_argument("--chat-format", default=None, help="force a chat format: jinja, plain or a family name")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token step: faster answers once the first has waited for the compile")
    p.set_defaults(func=run)


def run(args) -> int:
    from tunelib.errors import ConfigError
    from tunelib.generation import Generator, Sampling, load_model, seeded_rng
    from tunelib.tokenizers import from_pretrained

    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}; use 1 or more")
    loaded = load_model(args.checkpoint_dir, adapter_dir=args.adapter, dtype=args.dtype, device=args.device,
                        tokenizer_dir=args.tokenizer)
    tokenizer = from_pretrained(loaded.tokenizer_dir, chat_format=args.chat_format)
    rng, seed = seeded_rng(args.seed, next(loaded.model.parameters()).device)
    print(f"Chatting with {loaded.describe()} (seed {seed}). {HELP}", flush=True)
    if tokenizer.chat_format == "plain":
        print("Note: this tokenizer has no chat format, so turns are plain text; a base model may ramble.", flush=True)
    if args.compile:
        print("(--compile: the first answer waits for torch.compile of the decode step)", flush=True)
    generator = Generator(loaded.model, compile=args.compile)
    chat = Chat(generator, tokenizer, sampling, rng, args.max_new_tokens, args.system)
    return chat.loop()


class Chat:
    """One terminal conversation: read a line, answer it, keep both in the history."""

    def __init__(self, generator, tokenizer, sampling, rng, max_new_tokens: int, system: str | None):
        self.generator, self.tokenizer = generator, tokenizer
        self.sampling, self.rng, self.max_new_tokens = sampling, rng, max_new_tokens
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[dict] = []

    def loop(self) -> int:
        _line_editing()
        while True:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                print(flush=True)  # end the prompt's line, so the shell starts on a fresh one
                return 0
            text = line.strip()
            if text in ("/exit", "/quit"):
                return 0
            if text == "/clear":
                self.turns = []
                self.generator.reset()
                print("(new conversation)", flush=True)
            elif text:
                try:
                    self.answer(line)
                except KeyboardInterrupt:
                    # Ctrl-C outside the generation itself (while rendering the prompt): drop the
                    # unanswered message, so the history keeps alternating user and assistant.
                    if self.turns and self.turns[-1]["role"] == "user":
                        self.turns.pop()
                    print(" [stopped]", flush=True)

    def answer(self, line: str) -> None:
        """Generate the assistant's answer to `line`, streaming it, and add both to the history."""
        from tunelib.errors import UserError, program
        from tunelib.generation import stream_reply

        self.turns.append({"role": "user", "content": line})
        try:
            prompt = self._fitting_prompt()
        except UserError as e:
            self.turns.pop()
            print(f"{program()}: error: {e}", file=sys.stderr, flush=True)
            return
        reply = stream_reply(self.generator, self.tokenizer, prompt, max_new_tokens=self.max_new_tokens,
                             sampling=self.sampling, rng=self.rng, write=_write)
        print(" [stopped]" if reply.stopped == "interrupted" else "", flush=True)
        self.turns.append({"role": "assistant", "content": reply.text})

    def _fitting_prompt(self) -> list[int]:
        """The conversation's tokens, dropping the oldest exchanges when it would not leave room to answer."""
        from tunelib.errors import DataError

        room = min(self.max_new_tokens, self.generator.context // 2)  # answers must not be starved by history
        while True:
            ids, _ = self.tokenizer.tokenize_messages(self.system + self.turns, add_generation_prompt=True,
                                                      truncate=False)
            if len(ids) + room <= self.generator.context or len(self.turns) <= 1:
                break
            self.turns = self.turns[2:]  # the oldest user message and its answer
            print("(the oldest exchange was dropped to fit the model's context)", flush=True)
        if len(ids) >= self.generator.context:
            raise DataError(f"this message needs {len(ids)} tokens but the model's context holds "
                            f"{self.generator.context}; send a shorter one")
        return ids


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _line_editing() -> None:
    """Arrow keys and history in `input()` on a terminal (readline is absent on some platforms)."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401 - importing it is what enables line editing
        except ImportError:
            pass
