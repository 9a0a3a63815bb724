"""SentencePiece `tokenizer.model` files (Llama 2, Mistral, Gemma, Phi-3 originals)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunelib.tokenizers.codec import Offsets, special_splitter, split_on_specials
from tunelib.tokenizers.protobuf_wire import fields

_USER_DEFINED = 4  # ModelProto.SentencePiece.Type


def user_defined_pieces(model_proto: bytes) -> dict[str, int]:
    """Pieces of type USER_DEFINED (SentencePiece always emits them whole, like added tokens)."""
    found, index = {}, 0
    for number, value in fields(model_proto):
        if number != 1:  # ModelProto.pieces
            continue
        piece, kind = "", 1
        for sub, sub_value in fields(value):
            if sub == 1:
                piece = sub_value.decode("utf-8")
            elif sub == 3:
                kind = sub_value
        if kind == _USER_DEFINED:
            found[piece] = index
        index += 1
    return found


def _char_index(segment: str) -> list[int] | None:
    """Map from UTF-8 byte position to character position, or None when they coincide."""
    if segment.isascii():
        return None
    table = []
    for i, ch in enumerate(segment):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(segment))
    return table


class SentencePieceCodec:
    """Encodes with a SentencePiece model; special strings are split out first.

    Each text piece between special tokens is encoded on its own, so it gets SentencePiece's
    dummy-prefix space, as Meta's Llama 2 code and the Hugging Face "legacy" Llama tokenizer do.
    `added_tokens` maps extra special strings to ids (Phi-3's `<|user|>`...), which may lie
    beyond the model's own pieces.
    """

    def __init__(self, path: str | Path, added_tokens: dict[str, int] | None = None):
        import sentencepiece

        data = Path(path).read_bytes()
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=data)
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        sp = self.sp
        specials = {
            sp.id_to_piece(i): i
            for i in range(sp.get_piece_size())
            if sp.is_control(i) or sp.is_unknown(i)
        }
        specials.update(user_defined_pieces(sp.serialized_model_proto()))
        specials.update(added_tokens or {})
        self.special_tokens = specials
        self._by_id = {i: s for s, i in specials.items()}
        self._splitter = special_splitter(specials)
        self.vocab_size = max([sp.get_piece_size() - 1, *specials.values()]) + 1

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def encode(self, text: str) -> list[int]:
        ids = []
        for _, piece, special in split_on_specials(text, self._splitter):
            ids.extend([self.special_tokens[piece]] if special else self.sp.encode(piece))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        ids, offsets = [], []
        for start, piece, special in split_on_specials(text, self._splitter):
            if special:
                ids.append(self.special_tokens[piece])
                offsets.append((start, start + len(piece)))
                continue
            table = _char_index(piece)
            for i, begin, end in self._pieces(piece):
                if table is not None:
                    begin, end = table[begin], table[end]
                ids.append(i)
                offsets.append((start + begin, start + end))
        return ids, offsets

    def _pieces(self, segment: str) -> list[tuple[int, int, int]]:
        """(id, byte begin, byte end) for each piece of a segment without special strings."""
        proto = self.sp.encode(segment, out_type="serialized_proto")
        out = []
        for number, value in fields(proto):
            if number != 2:  # SentencePieceText.pieces
                continue
            piece = {2: 0, 4: 0, 5: 0}
            for sub, sub_value in fields(value):
                if sub in piece:
                    piece[sub] = sub_value
            out.append((piece[2], piece[4], piece[5]))
        return out

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        # SentencePiece drops control ids and cannot decode ids beyond its model, so runs of
        # ordinary ids are decoded on their own and special strings are put back between them.
        parts, run = [], []
        for i in ids:
            i = int(i)
            if i in self._by_id:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self._by_id[i])
            else:
                run.append(i)
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)
