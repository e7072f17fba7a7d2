"""A question and its passages -> the model's input: the manifest's input template, global
attention on `<s>` and the question, and the policy for inputs longer than the model accepts
(cut the end of the context, never the question; or refuse).

Text far beyond the limit is never tokenized whole: no token covers more characters than its
vocabulary string is long (bytes, for byte-level vocabularies), so a context of more than
(max_tokens + 1) x that length (x 2, for normalizers that fold characters) cannot fit, and is cut
to that character budget, at a whitespace, before tokenizing; a question that long is refused.
"""

import functools
import re
from dataclasses import dataclass

from ledserve.engine.errors import InvalidRequest


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    global_attention_mask: list[int]  # 1 on <s> and the question's tokens
    truncated_context_tokens: int = 0  # context tokens cut to fit the model (0: none)
    truncated_context_characters: int = 0  # cut by the character budget before tokenizing


class PromptBuilder:
    def __init__(self, tokenizer, template: str, max_tokens: int):
        self.tokenizer, self.template, self.max_tokens = tokenizer, template, max_tokens

    @functools.cached_property
    def character_budget(self) -> int:
        """More characters than this can never fit in max_tokens tokens."""
        longest = max(len(token) for token in self.tokenizer.get_vocab())
        return 2 * (self.max_tokens + 1) * longest

    def build(self, question: str, passages: str | list[str], truncate: bool = True) -> Prompt:
        """Passages are joined by newlines. With `truncate`, an over-long input loses the end of
        its context; without, it is an InvalidRequest."""
        if not question.strip():
            raise InvalidRequest("question must not be empty")
        budget = self.character_budget
        if len(question) > budget:
            raise InvalidRequest(
                f"question has {len(question)} characters; it cannot fit the model's "
                f"{self.max_tokens} tokens"
            )
        context = passages if isinstance(passages, str) else "\n".join(passages)
        chars = 0
        if len(context) > budget:
            if not truncate:
                raise InvalidRequest(
                    f"context has {len(context)} characters; it cannot fit the model's "
                    f"{self.max_tokens} tokens (truncation is REJECT)"
                )
            window = max(0, budget - 1024)  # the cut goes to the last whitespace in here
            spaces = [m.start() for m in re.finditer(r"\s", context[window:budget])]
            end = window + spaces[-1] if spaces else budget
            context, chars = context[:end], len(context) - end
        ids = self._ids(question, context)
        cut = 0
        if len(ids) > self.max_tokens:
            if not truncate:
                raise InvalidRequest(
                    f"input has {len(ids)} tokens; the model's maximum is {self.max_tokens} "
                    "(truncation is REJECT)"
                )
            ids, cut = self._truncate(question, context)
        question_part = self.template.split("{question}")[0] + question
        width = 1 + len(self.tokenizer(question_part, add_special_tokens=False)["input_ids"])
        return Prompt(ids, [int(i < width) for i in range(len(ids))], cut, chars)

    def _ids(self, question: str, context: str) -> list[int]:
        return self.tokenizer(self.template.format(question=question, context=context))["input_ids"]

    def _truncate(self, question: str, context: str) -> tuple[list[int], int]:
        """The input with the longest context prefix (cut at a token boundary) that fits, and the
        number of the context's tokens cut."""
        bare = self._ids(question, "")
        if len(bare) > self.max_tokens:
            raise InvalidRequest(
                f"question is too long: the input without context has {len(bare)} tokens; "
                f"the model's maximum is {self.max_tokens}"
            )
        ends = [
            end
            for _, end in self.tokenizer(
                context, add_special_tokens=False, return_offsets_mapping=True
            )["offset_mapping"]
        ]
        keep = len(ends)
        while True:  # the template's tokens around a cut context can differ by a few: recount
            ids = self._ids(question, context[: ends[keep - 1]] if keep else "")
            if len(ids) <= self.max_tokens:
                return ids, len(ends) - keep
            keep = max(0, keep - (len(ids) - self.max_tokens))
