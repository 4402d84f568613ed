"""Paged KV blocks: a ref-counted allocator with prefix caching.

A block holds `block_size` tokens' K/V. A full block whose tokens have all been computed is
registered under a key (hash of its parent's key, its tokens), so a later sequence with the
same prefix reuses it instead of computing it again. The key holds the tokens themselves, so a
hash collision can never hand out the wrong block. Freed blocks keep their content and stay
findable until they are reused: the free list is an LRU, evicting the least recently freed
first, and blocks that carry no cached content go to its front so they are reused before any
cached one."""

from __future__ import annotations

from collections import OrderedDict

from tenk.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "key")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.key: tuple | None = None  # prefix-cache key while the content is registered


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # front = evict first
        self.cached: dict[tuple, int] = {}  # key -> block id
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    # ------------------------------------------------------------------ stats

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences (cached-but-free blocks count as free)."""
        return 1.0 - len(self.free_blocks) / self.num_blocks

    # ------------------------------------------------------------------ prefix cache

    def _block_keys(self, seq: Sequence, num_blocks: int) -> list[tuple]:
        """Keys of the first `num_blocks` full blocks of seq, computed once per block."""
        keys = seq.block_hashes
        bs = self.block_size
        tokens = seq.token_ids
        for i in range(len(keys), num_blocks):
            parent = hash(keys[i - 1]) if i else None
            keys.append((parent, tuple(tokens[i * bs : (i + 1) * bs])))
        return keys

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of seq's tokens. At least one token is always left to
        compute, because the model must produce the logits that sample the next token."""
        if not self.enable_prefix_caching:
            return []
        max_blocks = (seq.num_tokens - 1) // self.block_size
        keys = self._block_keys(seq, max_blocks)
        hits: list[int] = []
        for i in range(max_blocks):
            block_id = self.cached.get(keys[i])
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that became full and computed in this step."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full <= seq.num_hashed_blocks:
            return
        keys = self._block_keys(seq, num_full)
        for i in range(seq.num_hashed_blocks, num_full):
            block = self.blocks[seq.block_table[i]]
            # Another sequence may have computed the same content in the same step; the first
            # one registered stays, this copy is simply freed later.
            if block.key is None and keys[i] not in self.cached:
                block.key = keys[i]
                self.cached[keys[i]] = block.block_id
        seq.num_hashed_blocks = num_full

    # ------------------------------------------------------------------ allocation

    def _take_free(self) -> int:
        block_id, _ = self.free_blocks.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:  # evict its cached content
            if self.cached.get(block.key) == block_id:
                del self.cached[block.key]
            block.key = None
        block.ref_count = 1
        return block_id

    def _num_blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def allocate_prefill(self, seq: Sequence, cached_blocks: list[int], num_new_tokens: int) -> bool:
        """Admit a waiting sequence: share `cached_blocks` (from lookup_prefix) and allocate
        blocks for `num_new_tokens` more. False (nothing changed) when the pool is short."""
        assert not seq.block_table, seq
        num_cached_tokens = len(cached_blocks) * self.block_size
        num_new_blocks = self._num_blocks_for(num_cached_tokens + num_new_tokens) - len(cached_blocks)
        # Cached blocks nobody holds sit in the free list: taking them shrinks it too.
        num_revived = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        if len(self.free_blocks) - num_revived < num_new_blocks:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_blocks[block_id]
            block.ref_count += 1
        seq.block_table = list(cached_blocks) + [self._take_free() for _ in range(num_new_blocks)]
        seq.num_computed_tokens = num_cached_tokens
        seq.num_hashed_blocks = len(cached_blocks)
        if self.enable_prefix_caching:
            self.prefix_cache_queries += seq.num_tokens
            self.prefix_cache_hits += num_cached_tokens
        return True

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow a running sequence's table to hold `num_new_tokens` more tokens."""
        needed = self._num_blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if needed > len(self.free_blocks):
            return False
        for _ in range(needed):
            seq.block_table.append(self._take_free())
        return True

    def free(self, seq: Sequence) -> None:
        """Drop seq's hold on its blocks. Tail blocks are freed first so they are evicted first:
        a prefix is worth more than its continuation."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free_blocks[block_id] = None
                if block.key is None:
                    self.free_blocks.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.num_hashed_blocks = 0

    def check_invariants(self) -> None:
        """For tests: ref counts agree with the free list and the cache index."""
        for block in self.blocks:
            in_free = block.block_id in self.free_blocks
            assert in_free == (block.ref_count == 0), (block.block_id, block.ref_count, in_free)
            if block.key is not None:
                assert self.cached.get(block.key) == block.block_id
        for key, block_id in self.cached.items():
            assert self.blocks[block_id].key == key
