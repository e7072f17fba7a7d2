"""The cross-attention K/V of every decoding request, one slot each, read by every decoder run.

Per layer a key and a value tensor [slots, heads, length, head_dim] (length: the longest input
held) and a mask [slots, length]. A joining request's K/V are copied into a free slot once (the
request's own tensors are then released); a leaving request only frees its slot (its mask row
becomes 0), so joins and leaves never copy the other requests' K/V. The tensors are reallocated
(the staying requests copied once) only when a join finds no free slot or a longer input than the
slots hold, or when at most a quarter of the slots, or half of the length, are still in use, or
when the spare capacity makes them larger than `max_tokens` (the admission budget) slots x length.
A reallocation leaves room for half as many requests again (within `max_tokens`), so requests
joining one by one copy the others a logarithmic number of times, not at every join (16 joins of
512-token LED-base inputs, one at a time: 2.0 s of copies and fresh pages when each join
reallocated, 0.5 s now; benchmarks/RESULTS.md, "cross-attention slots with room").
"""

import torch


class CrossCache:
    def __init__(self, device: torch.device, max_tokens: int):
        self.device, self.max_tokens = device, max_tokens
        self.tensors: list[torch.Tensor] = []  # per layer key, value: [slots, heads, length, dim]
        self.mask = torch.zeros((0, 0), dtype=torch.int64, device=device)  # [slots, length]
        self.owners: list[int | None] = []  # the request id in each slot; None: free
        self.lengths: list[int] = []  # input tokens of each slot's request

    @property
    def slots(self) -> int:
        return len(self.owners)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def end(self) -> int:
        """Slots up to the last one in use: what a decoder run reads (free ones after it are not
        bound, so spare capacity costs no compute)."""
        used = [s for s, owner in enumerate(self.owners) if owner is not None]
        return used[-1] + 1 if used else 0

    def bound(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(mask [end, length], per layer key, value [end, heads, length, dim]): contiguous views
        for the decoder's `encoder_attention_mask` and `cross_key_values` inputs."""
        end = self.end
        return self.mask[:end], [t[:end] for t in self.tensors]

    def update(self, requests) -> list[int]:
        """Hold the K/V of exactly `requests`; those not held yet bring theirs in `request.cross`
        (per layer key, value [1, heads, own_length, dim]). Returns each request's slot."""
        live = {r.id for r in requests}
        for slot, owner in enumerate(self.owners):
            if owner is not None and owner not in live:
                self.owners[slot], self.lengths[slot] = None, 0
                self.mask[slot] = 0
        placed = {owner: s for s, owner in enumerate(self.owners) if owner is not None}
        joining = [r for r in requests if r.id not in placed]
        length = max(
            [self.lengths[s] for s in placed.values()] + [r.input_ids.size for r in joining]
        )
        count = len(requests)
        short = len(joining) > self.slots - len(placed) or length > self.length
        # Spare slots are not read (see `end`); spare length is, so it goes at half.
        sparse = 4 * count <= self.slots or 2 * length <= self.length
        sparse |= self.slots * self.length > max(self.max_tokens, count * length)
        if not placed and count == 1:  # a lone request lends its own tensors: no copy
            self._adopt(requests[0])
            return [0]
        if short or sparse:
            room = max(count, self.max_tokens // length)  # slots within the budget
            self._resize(min(count + (count + 1) // 2, room), length, placed, joining)
        free = (s for s, owner in enumerate(self.owners) if owner is None)
        for r in joining:
            self._put(next(free), r)
        slots = {owner: s for s, owner in enumerate(self.owners) if owner is not None}
        return [slots[r.id] for r in requests]

    def _resize(self, slots: int, length: int, placed: dict[int, int], joining: list):
        """New tensors of `slots` x `length`, the placed requests moved to the first slots.

        The other slots are left unwritten (fresh pages are touched only when used): each is
        beyond `end`, so never read, until `_put` writes all of its length; a free slot below
        `end` still holds the finite K/V of the request that left it."""
        count, sources = len(placed), list(placed.values())
        old = torch.as_tensor(sources, dtype=torch.int64, device=self.device)
        in_order = sources == list(range(count))  # nobody left below them: a slice, no gather

        def held(t: torch.Tensor) -> torch.Tensor:  # the placed requests' rows of t, in order
            return t[:count] if in_order else t.index_select(0, old)

        keep = min(self.length, length)
        like = self.tensors or joining[0].cross  # per layer key, value
        shape = (slots, like[0].shape[1], length, like[0].shape[3])  # [slots, heads, len, dim]
        tensors = []
        for i in range(len(like)):
            tensor = torch.empty(shape, dtype=like[0].dtype, device=self.device)
            if placed:
                tensor[:count, :, :keep] = held(self.tensors[i])[:, :, :keep]
                tensor[:count, :, keep:] = 0  # masked, but read: 0 x NaN would still be NaN
            tensors.append(tensor)
        mask = torch.zeros((slots, length), dtype=torch.int64, device=self.device)
        if placed:
            mask[:count, :keep] = held(self.mask)[:, :keep]
        self.tensors, self.mask = tensors, mask
        self.owners = list(placed) + [None] * (slots - count)
        self.lengths = [self.lengths[s] for s in sources] + [0] * (slots - count)

    def _adopt(self, request):
        self.tensors = [c.contiguous() for c in request.cross]
        self.mask = torch.ones((1, request.input_ids.size), dtype=torch.int64, device=self.device)
        self.owners, self.lengths = [request.id], [request.input_ids.size]
        request.cross = None

    def _put(self, slot: int, request):
        """Copy a joining request's K/V into a free slot; stale K/V of an earlier owner beyond
        its length are zeroed (masked, but 0 x NaN would still be NaN)."""
        n = request.input_ids.size
        for tensor, own in zip(self.tensors, request.cross, strict=True):
            tensor[slot, :, :n] = own[0]
            tensor[slot, :, n:] = 0
        self.mask[slot, :n], self.mask[slot, n:] = 1, 0
        self.owners[slot], self.lengths[slot] = request.id, n
        request.cross = None
