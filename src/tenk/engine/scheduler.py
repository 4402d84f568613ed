"""Continuous batching with chunked prefill.

Each step the scheduler fills a token budget (`max_num_batched_tokens`): first the running
sequences (decodes, one token each, then prompts still being prefilled in chunks), then new
sequences from the waiting queue in arrival order, reusing cached prefix blocks. When the KV
pool runs dry it preempts the newest running sequence: its blocks are freed and it goes back
to the front of the waiting queue to be recomputed later, so no request is ever dropped."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from tenk.engine.block_manager import BlockManager
from tenk.engine.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerOutput:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed this step, per seq
    num_batched_tokens: int = 0
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def decode_only(self) -> bool:
        return all(n == 1 for n in self.num_new_tokens) and all(not s.in_prompt for s in self.seqs)

    def add(self, seq: Sequence, n: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(n)
        self.num_batched_tokens += n


class Scheduler:
    def __init__(
        self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, max_model_len: int = 1 << 62
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ one step

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        scheduled: set[int] = set()
        preempted: list[Sequence] = []
        # Decodes first (one token each, latency-bound), then chunked prefills, oldest first.
        order = sorted(self.running, key=lambda s: (s.num_uncomputed_tokens > 1, s.seq_id))
        for seq in order:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            if seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.max_model_len:
                continue  # its last token (still in flight) is its final one: nothing left to compute
            n = min(seq.num_uncomputed_tokens, budget)
            while not bm.allocate_slots(seq, n):
                victim = max((s for s in self.running if s.seq_id not in scheduled), key=lambda s: s.seq_id)
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.add(seq, n)
                scheduled.add(seq.seq_id)
                budget -= n
        if preempted:
            # Back to the front of the queue, oldest first, ahead of requests never started.
            self.waiting.extendleft(sorted(preempted, key=lambda s: s.seq_id, reverse=True))
            out.num_preempted = len(preempted)
            self.num_preemptions += len(preempted)
            return out  # the pool is short: admitting new work now would only thrash

        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if bm.enable_prefix_caching and self._sibling_prefilling(seq):
                break  # wait one step and share the sibling's prompt blocks instead of recomputing
            cached = bm.lookup_prefix(seq)
            n = min(seq.num_tokens - len(cached) * bm.block_size, budget)
            if not bm.allocate_prefill(seq, cached, n):
                break
            self.waiting.popleft()
            if seq.num_output_tokens == 0:
                seq.num_cached_tokens = seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.add(seq, n)
            budget -= n
        return out

    def _sibling_prefilling(self, seq: Sequence) -> bool:
        siblings = seq.request.seqs
        if len(siblings) == 1 or seq.num_prompt_tokens <= self.block_manager.block_size:
            return False  # nothing to share: a prompt shorter than a block is never cached
        return any(
            s is not seq and s.status is SequenceStatus.RUNNING and s.in_prompt for s in siblings
        )

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.reset_for_recompute()

    # ------------------------------------------------------------------ after the step

    def update_computed(self, out: SchedulerOutput) -> None:
        """The step is launched: its tokens' K/V are (or, in stream order, will be) cached."""
        for seq, n in zip(out.seqs, out.num_new_tokens):
            seq.num_computed_tokens += n

    def cache_blocks(self, out: SchedulerOutput) -> None:
        """Offer the step's newly full blocks to the prefix cache; their token values must all be
        known on the host by now (no placeholder inside)."""
        bm = self.block_manager
        for seq in out.seqs:
            if seq.status is SequenceStatus.RUNNING:
                bm.cache_full_blocks(seq)

    def finish(self, seq: Sequence) -> None:
        """Release a sequence that stopped (or was aborted) wherever it is."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED
