"""Incremental detokenization: text deltas whose concatenation is the full decode.

Byte-level BPE tokens can end inside a UTF-8 character; a delta is held back while the decoded
text ends with the replacement character, so no broken character is ever emitted.
"""


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""  # emitted so far

    def add(self, tokens: list[int]) -> str:
        """Append tokens; return the new text that is safe to emit (may be empty)."""
        self.tokens += tokens
        full = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""
        delta, self.text = full[len(self.text) :], full
        return delta

    def flush(self) -> str:
        """The rest at the end of the sequence, whatever it ends with."""
        full = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        delta, self.text = full[len(self.text) :], full
        return delta
