"""LLMEngine: the step-by-step API (what the server drives, what LLM wraps).

    engine = LLMEngine(EngineConfig(model=path))
    engine.add_request("r1", prompt_token_ids, SamplingParams(max_tokens=32))
    while engine.has_unfinished_requests():
        for out in engine.step(): ...

One step = schedule -> launch the model runner (forward + sample) -> for each token sampled by
the step before: detokenize, check stops, free finished sequences -> RequestOutputs for the
requests that produced something. A finished request is reported exactly once.

Overlap (`async_scheduling`, on by default): step N+1 is scheduled and launched before step N's
samples are read back, so the GPU never waits for the host's bookkeeping. The sampled token's
value stays on the device (the host holds a PENDING placeholder) and feeds the next decode
directly; a sequence that turns out to have stopped wastes one slot of the step in flight,
whose sample is then dropped. Steps whose sampling reads earlier tokens' values (penalties)
are finished before the next is scheduled. With the switch off, each step completes in turn.

Tensor parallel (`tensor_parallel_size` N > 1): this process is rank 0 and the only one that
schedules and samples; ranks 1..N-1 run in worker processes (tp_workers.py) that repeat each
step's forward. `close()` stops them (also at garbage collection and at exit); a dead worker
makes the next step raise WorkerDiedError."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

from tenk.engine.block_manager import BlockManager
from tenk.engine.config import EngineConfig
from tenk.engine.detokenizer import Detokenizer
from tenk.engine.errors import InvalidRequestError
from tenk.engine.model_runner import StepHandle
from tenk.engine.outputs import CompletionOutput, EngineStats, RequestOutput
from tenk.engine.sampling_params import SamplingParams
from tenk.engine.scheduler import Scheduler, SchedulerOutput
from tenk.engine.sequence import PENDING, Request
from tenk.engine.tp_workers import start_runner
from tenk.errors import ConfigError

logger = logging.getLogger(__name__)

# Start-up requests (count, prompt tokens): one and several sequences, short prompts (the smallest
# attention tiles), odd lengths and a full 256-token batch.
WARM_UP_SHAPES = ((1, 1), (1, 7), (3, 5), (1, 40), (2, 100), (8, 256))


class LLMEngine:
    def __init__(self, config: EngineConfig):
        from transformers import AutoTokenizer

        self.config = config
        self.model_config = config.model_config
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not load a tokenizer from {config.tokenizer!r}: {exc}") from None
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))

        # With tensor_parallel_size N, ranks 1..N-1 start here in their own processes.
        self.runner = start_runner(config, self.eos_token_ids)
        try:
            num_blocks = self._size_kv_cache()
        except BaseException:
            self.runner.close()
            raise
        logger.info(
            "KV cache: %d tokens in %s (%d blocks of %d)", num_blocks * config.block_size,
            str(config.kv_cache_torch_dtype).removeprefix("torch."), num_blocks, config.block_size,
        )

        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len
        )
        self.detokenizer = Detokenizer(self.tokenizer, self.eos_token_ids, config.max_model_len)
        self.requests: dict[str, Request] = {}
        self._in_flight: _LaunchedStep | None = None
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        if config.torch_device.type == "cuda":
            self._warm_up_steps()
            self._log_device_memory()

    def _warm_up_steps(self) -> int:
        """Serve a few throw-away requests through the real step path before the first user's:
        Triton compiles a kernel variant on its first launch (a second or more each), and the
        paged prefill path (its tiles chosen by prompt length, one or many sequences) is not
        reached by the start-up profile, so early requests paid those compiles in their TTFT.
        Returns how many of WARM_UP_SHAPES fitted the cache and ran."""
        import random

        t0 = time.perf_counter()
        rng = random.Random(0)
        vocab = self.model_config.vocab_size
        room = self.block_manager.num_free_blocks * self.config.block_size // 2
        params = SamplingParams(max_tokens=2, ignore_eos=True, temperature=0.0)
        ran = 0
        for n, length in WARM_UP_SHAPES:  # (requests, prompt tokens)
            length = min(length, self.config.max_model_len - 2)
            if length < 1 or n * (length + 2) > room:
                continue
            for j in range(n):
                ids = [rng.randrange(vocab) for _ in range(length)]  # fresh ids: no prefix-cache hits
                self.add_request(f"__tenk_warm_up_{ran}_{j}", ids, params)
            while self.has_unfinished_requests():
                self.step(finished_only=True)
            ran += 1
        self.prompt_tokens_total = self.generation_tokens_total = 0
        logger.info("warm-up: %d step shapes in %.1f s", ran, time.perf_counter() - t0)
        return ran

    def _log_device_memory(self) -> None:
        """What the device holds once serving can start (rank 0's GPU), for memory-layout reports:
        beyond weights and KV cache, the rest is activations, CUDA graphs and the CUDA context."""
        import torch

        free, total = torch.cuda.mem_get_info(self.config.torch_device)
        logger.info("GPU memory after start-up: %.2f GiB in use of %.2f GiB", (total - free) / 2**30, total / 2**30)

    def _size_kv_cache(self) -> int:
        """Size the KV cache on every rank, fit max_model_len to it, allocate it."""
        config = self.config
        num_blocks = self.runner.call("size_kv_cache")
        capacity = num_blocks * config.block_size
        if num_blocks < 1:
            raise ConfigError(
                "no memory is left for the KV cache after loading the model: raise gpu_memory_utilization, "
                "lower max_num_batched_tokens, or use more GPUs"
            )
        if capacity < config.max_model_len:
            if config.max_model_len_explicit:
                raise ConfigError(
                    f"the KV cache holds {capacity} tokens, fewer than max_model_len {config.max_model_len}: "
                    "lower max_model_len or give the cache more memory"
                )
            logger.warning("max_model_len lowered from %d to %d, all the KV cache holds", config.max_model_len, capacity)
            config.max_model_len = capacity
        self.runner.call("allocate", num_blocks, config.max_model_len)
        return num_blocks

    def close(self) -> None:
        """Stop the tensor-parallel workers and leave their group (nothing to do with TP=1).
        Also runs when the engine is garbage-collected and at interpreter exit."""
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    # ------------------------------------------------------------------ requests

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float | None = None
    ) -> None:
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        prompt = list(prompt_token_ids)
        n = len(prompt)
        if n == 0:
            raise InvalidRequestError("the prompt is empty: give at least one token")
        vocab = self.model_config.vocab_size
        bad = next((t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})")
        limit = self.max_model_len
        if params.max_tokens is None:
            if n >= limit:
                raise InvalidRequestError(f"the prompt has {n} tokens; the context length is {limit}, none left to generate")
            max_tokens = limit - n
        else:
            max_tokens = params.max_tokens
            if n + max_tokens > limit:
                raise InvalidRequestError(
                    f"the prompt ({n} tokens) plus max_tokens ({max_tokens}) exceeds the context length {limit}"
                )
        request = Request(request_id, prompt, params, arrival_time or time.time(), max_tokens)
        self.requests[request_id] = request
        for seq in request.seqs:
            self.scheduler.add(seq)

    def abort_request(self, request_id: str | Iterable[str]) -> None:
        """Stop requests now and free their blocks; unknown or finished ids are ignored.
        Aborted requests produce no further output."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for rid in ids:
            request = self.requests.pop(rid, None)
            if request is None:
                continue
            for seq in request.seqs:
                if not seq.is_finished:
                    seq.finish_reason = "abort"
                    self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ------------------------------------------------------------------ one step

    def step(self, finished_only: bool = False) -> list[RequestOutput]:
        """One scheduler step. `finished_only` skips building outputs of requests still running
        (offline generation reads only the final ones; at a few hundred requests per step the
        per-step outputs cost a few percent of throughput)."""
        outputs: list[RequestOutput] = []
        previous, self._in_flight = self._in_flight, None
        if previous is not None and (previous.needs_sync or not self.config.async_scheduling):
            outputs = self._process(previous, finished_only)
            previous = None
        sched = self.scheduler.schedule()
        launched = self._launch(sched) if not sched.is_empty else None
        if previous is not None:  # the device runs `launched` meanwhile
            outputs = self._process(previous, finished_only)
        if launched is not None:
            if self.config.async_scheduling:
                self._in_flight = launched
            else:
                outputs = self._process(launched, finished_only)
            # Every input of `launched` has its value on the host now: offer its full blocks.
            self.scheduler.cache_blocks(launched.sched)
        return outputs

    def _launch(self, sched: SchedulerOutput) -> "_LaunchedStep":
        handle = self.runner.launch(sched.seqs, sched.num_new_tokens, sched.decode_only)
        self.scheduler.update_computed(sched)
        slots = []
        for seq in handle.sample_seqs:
            slots.append(len(seq.token_ids))
            seq.token_ids.append(PENDING)
            seq.num_pending += 1
        needs_sync = any(s.params.has_penalties for s in handle.sample_seqs)
        return _LaunchedStep(sched, handle, slots, needs_sync)

    def _process(self, step: "_LaunchedStep", finished_only: bool) -> list[RequestOutput]:
        """Read a launched step's samples back and apply them: text, stops, finished requests."""
        sampled = self.runner.fetch(step.handle)
        touched: dict[str, Request] = {}
        for i, (seq, slot) in enumerate(zip(step.handle.sample_seqs, step.slots)):
            if seq.is_finished:
                continue  # stopped or aborted while this step ran: its sample is dropped
            seq.token_ids[slot] = sampled.token_ids[i]
            seq.num_pending -= 1
            request = seq.request
            if not request.prompt_counted:
                request.prompt_counted = True
                self.prompt_tokens_total += len(request.prompt_token_ids)
            if seq.logprobs is not None:
                seq.logprobs.append(sampled.logprobs[i])
                seq.cumulative_logprob += sampled.sampled_logprobs[i]
            self.generation_tokens_total += 1
            if self.detokenizer.process(seq, slot):
                self.scheduler.finish(seq)
            touched[request.request_id] = request
        outputs = []
        for request in touched.values():
            done = request.finished
            if done:
                del self.requests[request.request_id]
            if done or not finished_only:
                outputs.append(self._output(request))
        return outputs

    def _output(self, request: Request) -> RequestOutput:
        visible = self.detokenizer.visible_text
        completions = []
        finished = True
        for seq in request.seqs:
            lp = seq.logprobs
            completions.append(
                CompletionOutput(
                    seq.index,
                    visible(seq),
                    seq.output_token_ids,
                    seq.cumulative_logprob if lp is not None else None,
                    list(lp) if lp is not None else None,
                    seq.finish_reason,
                    seq.stop_reason,
                )
            )
            finished = finished and seq.finish_reason is not None
        return RequestOutput(
            request.request_id, request.prompt_token_ids, completions, finished, request.num_cached_tokens
        )

    # ------------------------------------------------------------------ stats

    def get_stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=bm.usage,
            num_kv_blocks=bm.num_blocks,
            kv_capacity_tokens=bm.num_blocks * bm.block_size,
            prefix_cache_queries=bm.prefix_cache_queries,
            prefix_cache_hits=bm.prefix_cache_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions,
        )


@dataclass
class _LaunchedStep:
    sched: SchedulerOutput
    handle: StepHandle
    slots: list[int]  # per sampling sequence: index of its PENDING placeholder in token_ids
    needs_sync: bool  # the next step's sampling needs these values on the host first
