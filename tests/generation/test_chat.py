"""`tune chat`: through a pseudo-terminal as a user types (answers stream, Ctrl-D and Ctrl-C end
it with exit 0 and no traceback), and the history kept in the chat format."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

import pytest

from support.recipes import tiny_model_folder
from tunelib.generation.prompt import conversation, encode_request

pytest.importorskip("transformers")

PROMPT = ">>> "


class Terminal:
    """`tune chat ...` in a child process whose terminal is a pty we type into."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "HF_HUB_OFFLINE": "1"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so Ctrl-C sends SIGINT
            os.execve(sys.executable, [sys.executable, "-m", "tunelib.cli.main", "chat", *args], env)
        self.output = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        """Read until `text` appears after what was read before; return everything up to it."""
        start, deadline = len(self.output), time.monotonic() + timeout
        while text not in self.output[start:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout} s; the terminal shows:\n{self.output}")
            if select.select([self.fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the chat ended before {text!r}; the terminal shows:\n{self.output}")
                self.output += chunk.decode(errors="replace")
        end = self.output.index(text, start)
        return self.output[start:end]

    def read_more(self, count: int, timeout: float = 60) -> None:
        """Read until `count` more characters have arrived."""
        want, deadline = len(self.output) + count, time.monotonic() + timeout
        while len(self.output) < want:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing more within {timeout} s; the terminal shows:\n{self.output}")
            if select.select([self.fd], [], [], 0.5)[0]:
                self.output += os.read(self.fd, 4096).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30) -> int:
        """The exit code, reading what is left on the terminal meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._drain()
                return os.waitstatus_to_exitcode(status)
            self._drain()
        os.kill(self.pid, 9)
        raise AssertionError(f"tune chat did not exit; the terminal shows:\n{self.output}")

    def _drain(self) -> None:
        while select.select([self.fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk.decode(errors="replace")


def chat(trained, *extra: str) -> Terminal:
    return Terminal(str(trained.base), "--adapter", str(trained.lora / "adapter"), "--device", "cpu",
                    "--dtype", "fp32", "--temperature", "0", *extra)


def expected_answer(trained, turns: list[dict], max_new_tokens: int) -> tuple[str, list[int]]:
    """The greedy answer to `turns` from the merged model through transformers, and the prompt's ids."""
    import torch

    from support.models import load_hf_model
    from tunelib.tokenizers import from_pretrained

    tokenizer = from_pretrained(trained.base)
    ids = encode_request(tokenizer, conversation(None, messages=turns))
    model = load_hf_model(trained.lora / "merged")
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if token in tokenizer.stop_tokens:
                break
            out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True), ids


@pytest.mark.slow
def test_a_conversation_in_a_terminal_ends_on_ctrl_d(trained):
    term = chat(trained, "--max-new-tokens", "8", "--system", "Be brief.")
    assert "Chatting with" in term.read_until(PROMPT)
    term.type("Hello there\r")
    first = term.read_until(PROMPT)
    term.type("Tell me more\r")
    second = term.read_until(PROMPT)
    term.type("\x04")  # Ctrl-D on an empty line
    assert term.wait() == 0
    assert "Traceback" not in term.output

    # The second answer was generated after the whole conversation so far, in the chat format.
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    answer1, _ = expected_answer(trained, turns, 8)
    turns += [{"role": "assistant", "content": answer1}, {"role": "user", "content": "Tell me more"}]
    answer2, _ = expected_answer(trained, turns, 8)
    assert answer1.strip() and answer1 in first.replace("\r\n", "\n")
    assert answer2.strip() and answer2 in second.replace("\r\n", "\n")


@pytest.mark.slow
def test_ctrl_c_stops_an_answer_then_ends_the_chat(tmp_path):
    # A context of 8192 positions, so the answer can be long enough that no machine finishes it
    # before the Ctrl-C arrives (the shared tiny model's 256 positions took a fast one 0.1 s).
    folder = tiny_model_folder(tmp_path, "llama3_2", max_position_embeddings=8192)
    term = Terminal(str(folder), "--device", "cpu", "--dtype", "fp32", "--temperature", "0", "--max-new-tokens", "8000")
    term.read_until(PROMPT)
    term.type("Write a long story\r")
    term.read_until("story\r\n")  # the terminal's echo of the line
    term.read_more(3)  # the first pieces of the answer are on the screen
    term.type("\x03")  # Ctrl-C while it is being written
    stopped = term.read_until(PROMPT)
    assert "[stopped]" in stopped
    # A SIGINT that lands between the prompt's echo and readline's wait for input is only seen
    # at the next key (CPython's readline); a person's Ctrl-C never comes that fast.
    time.sleep(1)
    term.type("\x03")  # Ctrl-C at the prompt ends the chat
    assert term.wait() == 0
    assert "Traceback" not in term.output and "KeyboardInterrupt" not in term.output


def test_the_history_is_the_conversation_in_the_chat_format(trained, monkeypatch, capsys):
    """What the model is fed on each turn: the whole conversation, rendered by the chat format."""
    from tunelib.cli.chat import Chat
    from tunelib.generation import Generator, Sampling, load_model
    from tunelib.tokenizers import from_pretrained

    model = load_model(trained.base, adapter_dir=trained.lora / "adapter", dtype="fp32", device="cpu").model
    tokenizer = from_pretrained(trained.base)
    generator = Generator(model)
    prompts = []
    stream = generator.stream
    monkeypatch.setattr(generator, "stream", lambda prompt, **kw: prompts.append(list(prompt)) or stream(prompt, **kw))
    lines = iter(["Hello there", "/clear", "Hi", "And then?"])
    monkeypatch.setattr("builtins.input", lambda _: next(lines))  # StopIteration ends the loop below

    session = Chat(generator, tokenizer, Sampling(), None, 6, "Be brief.")
    with pytest.raises(StopIteration):
        session.loop()
    system = {"role": "system", "content": "Be brief."}
    first = [system, {"role": "user", "content": "Hello there"}]
    assert prompts[0] == encode_request(tokenizer, conversation(None, messages=first))
    second = [system, {"role": "user", "content": "Hi"}]  # /clear forgot the first exchange
    assert prompts[1] == encode_request(tokenizer, conversation(None, messages=second))
    third = second + [session.turns[1], {"role": "user", "content": "And then?"}]
    assert session.turns[1]["role"] == "assistant" and session.turns[1]["content"]
    assert prompts[2] == encode_request(tokenizer, conversation(None, messages=third))
    assert "(new conversation)" in capsys.readouterr().out


def test_a_missing_folder_is_one_line(tune, tmp_path):
    code, out, err = tune("chat", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("tune: error: ") and err.count("\n") == 1
