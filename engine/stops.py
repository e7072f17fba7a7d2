"""Stop strings: a sequence ends once its decoded text contains one, and its text ends before the
first occurrence (finish reason stop_sequence).

The check after each token decodes only a window of the last tokens, long enough for the longest
stop (every token adds at least one byte of text), so it costs the same at token 10 and token
1,000; a stop split across tokens, or one that a multi-byte character completes, is found on the
token that completes it. `StopText` holds back streamed text that may be the beginning of a stop,
so streamed deltas concatenate to the text a unary answer returns.
"""


def first_stop(text: str, stops) -> int | None:
    """Where the first occurrence of any stop begins in `text` (None: none occurs)."""
    found = [at for at in (text.find(s) for s in stops) if at >= 0]
    return min(found) if found else None


class StopStrings:
    """One request's stop strings, checked against its token sequences."""

    def __init__(self, stops: tuple[str, ...], tokenizer):
        self.stops, self.tokenizer = stops, tokenizer
        self.window = max(len(s.encode()) for s in stops) + 8  # tokens

    def decode(self, tokens) -> str:
        """The text of decoder tokens, as the answer's text is decoded."""
        return self.tokenizer.decode([int(t) for t in tokens], skip_special_tokens=True)

    def hit(self, sequence) -> bool:
        """Whether the last token of `sequence` completes a stop: one occurs more often in the
        text of the last `window` tokens than in that of the same tokens but the last."""
        tail = sequence[-self.window - 1 :]
        new, old = self.decode(tail), self.decode(tail[:-1])
        return any(new.count(s) > old.count(s) for s in self.stops)

    def contained(self, tokens) -> bool:
        """Whether the text of `tokens` contains a stop."""
        return first_stop(self.decode(tokens), self.stops) is not None

    def cut(self, text: str) -> str:
        """The text before the first stop (all of it where none occurs)."""
        at = first_stop(text, self.stops)
        return text if at is None else text[:at]


class StopText:
    """Streamed text under stop strings: `add` returns what is safe to send, holding back a tail
    that may begin a stop and ending before the first stop; `flush` releases the tail at the end
    of a sequence that did not stop."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.held, self.stopped = stops, "", False

    def add(self, delta: str) -> str:
        if self.stopped:
            return ""
        text = self.held + delta
        at = first_stop(text, self.stops)
        if at is not None:
            self.stopped, self.held = True, ""
            return text[:at]
        keep = max(
            (n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1)
             if text.endswith(s[:n])),
            default=0,
        )  # fmt: skip
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
