"""Incremental detokenization: text deltas whose concatenation is the full decode, in O(new
tokens) per call.

Each call decodes only a short window: from the first token of the previous delta (`prefix`, for
the context a tokenizer needs at a boundary) to the end, and emits what that window's text adds to
the text of its already-emitted part (`read`), as text-generation-inference's `decode_token` does.
Byte-level BPE tokens can end inside a UTF-8 character; a delta is held back while the window's
text ends with the replacement character, so no broken character is ever emitted. A tokenizer that
cleans up tokenization spaces (" ." -> "."; patterns of at most four characters, each starting
with a space) gets the clean-up applied to the raw text piecewise, cut only where no pattern can
span the cut, so the result is the tokenizer's own decode.

A fast tokenizer's windows are decoded by its `tokenizers` backend directly: what its `decode`
does without the clean-up, without the Python wrapping that cost several times the decode
itself at every streamed token.
"""


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        fast = getattr(tokenizer, "is_fast", False) is True
        self.backend = tokenizer.backend_tokenizer if fast else None
        self.cleanup = getattr(tokenizer, "clean_up_tokenization_spaces", False) is True
        self.tokens: list[int] = []
        self.prefix = 0  # first token of the decoded window
        self.read = 0  # tokens whose text was emitted (or is pending)
        self.pending = ""  # raw text held back from the clean-up

    def _decode(self, tokens: list[int]) -> str:
        if self.backend is not None:
            return self.backend.decode(tokens, skip_special_tokens=True)
        return self.tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _window(self) -> tuple[str, str]:
        """(text of the window's emitted part, text of the whole window), before clean-up."""
        window = self.tokens[self.prefix :]
        return self._decode(window[: self.read - self.prefix]), self._decode(window)

    def add(self, tokens: list[int]) -> str:
        """Append tokens; return the new text that is safe to emit (may be empty)."""
        self.tokens += tokens
        emitted, text = self._window()
        if len(text) <= len(emitted) or text.endswith("\ufffd") or not text.startswith(emitted):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return self._release(text[len(emitted) :])

    def flush(self) -> str:
        """The rest at the end of the sequence, whatever it ends with."""
        emitted, text = self._window()
        self.prefix = self.read = len(self.tokens)
        return self._release(text[len(emitted) :], final=True)

    def _release(self, raw: str, final: bool = False) -> str:
        if not self.cleanup:
            return raw
        self.pending += raw
        cut = len(self.pending)
        while not final and cut > 0 and " " in self.pending[max(cut - 3, 0) : cut]:
            cut -= 1  # a pattern starting in the last three characters may go on past them
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return self.tokenizer.clean_up_tokenization(out)
