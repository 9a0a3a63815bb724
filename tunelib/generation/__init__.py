"""Generation with a KV cache, and loading any trained model for it.

    from tunelib.generation import Generator, Sampling, TextStream, conversation, encode_request, load_model
    from tunelib.tokenizers import from_pretrained
    loaded = load_model("/tmp/Llama-3.2-1B-Instruct", adapter_dir="out/final/adapter")
    tok = from_pretrained(loaded.tokenizer_dir)
    prompt_ids = encode_request(tok, conversation("Tell me a joke"))
    gen, text = Generator(loaded.model), TextStream(tok)
    for token in gen.stream(prompt_ids, max_new_tokens=100, stop_tokens=tok.stop_tokens,
                            sampling=Sampling(temperature=0.7, top_p=0.9)):
        print(text.push(token), end="", flush=True)
    print(text.flush())

Modules: `sampling` (greedy, temperature, top-k, top-p), `generator` (the cached loop),
`stream` (tokens to text while generating), `prompt` (prompt or conversation to ids),
`reply` (one streamed answer), `loading` (model folders, adapters, quantized folders),
`harness` (the model as lm-evaluation-harness sees it; imports lm-eval when used).
"""

from tunelib.generation.generator import Generator
from tunelib.generation.loading import Loaded, load_model
from tunelib.generation.prompt import build_request, conversation, encode_request
from tunelib.generation.reply import Reply, seeded_rng, stream_reply
from tunelib.generation.sampling import Sampling, sample
from tunelib.generation.stream import TextStream

__all__ = ["Generator", "Loaded", "Reply", "Sampling", "TextStream", "build_request", "conversation", "encode_request",
           "load_model", "sample", "seeded_rng", "stream_reply"]
