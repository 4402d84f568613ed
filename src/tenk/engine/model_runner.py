"""ModelRunner: owns the model, its KV cache and the sampler on one device.

Startup: load the weights, run one profiling forward at the full token budget to learn the
activation peak, give what is left (times gpu_memory_utilization) to KV blocks, bind each
layer's cache views, and capture CUDA graphs (decode steps by batch size, other steps by token
bucket). A step: pack the scheduled sequences into one flat batch, run the model (a graph
replay unless the engine runs eagerly), take the last hidden row
of every sequence that samples, compute its logits and sample. `launch` queues all of that on
the device and returns; `fetch` waits for the samples, so the engine can do its host work for
one step while the device runs the next.

Tensor parallel (tp_workers.py): every rank holds a ModelRunner. Rank 0's runs the steps and
sends each method that all ranks must run, by name, to the others first (`call`); a step's
packed batch goes to every rank, all ranks run the forward and the logits' all-gather, only
rank 0 samples, and with overlap scheduling it broadcasts the sampled tokens, which the next
step's pending inputs read on every rank."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from tenk.engine.batch import HostBatch, pack_batch, upload_batch
from tenk.engine.config import EngineConfig
from tenk.engine.cuda_graphs import CudaGraphRunner
from tenk.engine.mixed_graphs import MixedGraphRunner
from tenk.engine.kv_cache import allocate_kv_cache, kv_cache_num_blocks
from tenk.engine.sampler import SampleTensors, Sampler, SamplerOutput, SamplingBatch
from tenk.engine.sequence import Sequence
from tenk.kernels.attention import AttentionMetadata
from tenk.parallel.state import tp_all_reduce, tp_broadcast

logger = logging.getLogger(__name__)

_PROFILE_SEQ_LEN = 256  # profiling prompts: long enough for realistic GEMMs, short for the reference attention


class ModelRunner:
    def __init__(self, config: EngineConfig, eos_token_ids: tuple[int, ...], rank: int = 0):
        """Loads the model (this rank's shard). Collectives start with `size_kv_cache`."""
        from tenk.models.loader import load_model

        self.config = config
        self.rank = rank
        self.device = config.torch_device
        self.dtype = config.torch_dtype
        self.kv_dtype = config.kv_cache_torch_dtype  # the model's dtype, or fp8 e4m3
        self.model_config = config.model_config
        self.block_size = config.block_size
        self.eos_token_ids = eos_token_ids
        self.tp_size = config.tensor_parallel_size
        self.workers = None  # rank 0 with TP > 1: the TPWorkers handle on ranks 1..N-1
        # With overlap scheduling, pending inputs are read from the last step's samples on
        # every rank, so rank 0 broadcasts them (without overlap they come in input_ids).
        self.share_tokens = self.tp_size > 1 and config.async_scheduling
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)
        from tenk.quant import quant_factory, tensor_adapter, weight_bytes_by_format
        from tenk.quant.select import resolve_quantization

        qcfg = resolve_quantization(config.quantization, self.model_config.quantization, config.load_format, self.model_config)
        self.model = load_model(
            self.model_config, config.model, self.device, self.dtype, load_format=config.load_format, seed=config.seed,
            quant_factory=quant_factory(qcfg), name_transform=tensor_adapter(qcfg) if qcfg else None,
            expert_parallel=config.enable_expert_parallel,
        )
        if rank == 0:
            sizes = ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in sorted(weight_bytes_by_format(self.model).items()))
            logger.info("weights (%s, %s): %s", qcfg.name if qcfg else "unquantized", config.load_format, sizes)
        self.layers = self.model.attention_layers()
        self.sampler = Sampler()
        self.num_blocks = 0  # set by size_kv_cache
        self.kv_cache: torch.Tensor | None = None
        self.graph_runner: CudaGraphRunner | None = None
        self.mixed_runner: MixedGraphRunner | None = None
        self._prev_tokens: torch.Tensor | None = None  # last launch's sampled tokens, on the device
        self._prev_rows: dict[int, int] = {}  # seq_id -> row in _prev_tokens

    def call(self, method: str, *args):
        """Run `method` here; on rank 0 of a TP engine, on every rank (the others first)."""
        if self.workers is None:
            return getattr(self, method)(*args)
        with self.workers.watch():
            self.workers.send(method, args)
            return getattr(self, method)(*args)

    def close(self) -> None:
        self.release_graphs()
        if self.workers is not None:
            self.workers.close()

    def release_graphs(self) -> None:
        """Drop the captured graphs. Each graph that captured an NCCL collective holds a
        reference on the communicator, and destroying the process group waits for it."""
        if self.graph_runner is None and self.mixed_runner is None:
            return
        for runner in (self.graph_runner, self.mixed_runner):
            if runner is not None:
                runner.graphs.clear()
        self.graph_runner = self.mixed_runner = None
        import gc

        gc.collect()
        torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ startup

    @torch.inference_mode()
    def _profile_peak(self) -> None:
        """One forward over a full token budget plus logits and a top-p sample at max_num_seqs
        rows: the peak activation memory a real step can reach."""
        cfg = self.config
        total = min(cfg.max_num_batched_tokens, cfg.max_model_len * cfg.max_num_seqs)
        seq_len = min(_PROFILE_SEQ_LEN, cfg.max_model_len, total)
        lens = [seq_len] * max(1, total // seq_len)
        n = sum(lens)
        ids = torch.zeros(n, dtype=torch.int64, device=self.device)
        pos = torch.cat([torch.arange(k, device=self.device) for k in lens])
        hidden = self.model(ids, pos, AttentionMetadata.for_prefill_without_cache(lens, self.device))
        rows = min(cfg.max_num_seqs, n)
        logits = self.model.compute_logits(hidden[:rows])
        ones = torch.ones(rows, device=self.device)
        b = SamplingBatch(
            all_greedy=False, greedy=None, temperature=ones, top_k=None, top_p=ones * 0.9, min_p=None,
            repetition_penalty=None, presence_penalty=None, frequency_penalty=None, prompt_ids=None,
            output_ids=None, banned=None, generators=[], num_logprobs=None, max_logprobs=-1,
        )
        self.sampler(logits, b)

    def size_kv_cache(self) -> int:
        """KV blocks this rank can hold; with TP the fewest any rank can (an all-reduce MIN),
        so one block table is valid on every rank."""
        num_blocks = self._size_kv_cache()
        if self.tp_size > 1:
            t = torch.tensor([num_blocks], dtype=torch.int64, device=self.device)
            num_blocks = int(tp_all_reduce(t, torch.distributed.ReduceOp.MIN).item())
        self.num_blocks = num_blocks
        return num_blocks

    def _size_kv_cache(self) -> int:
        cfg = self.config
        kw = dict(
            dtype=self.kv_dtype, block_size=cfg.block_size, tp_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization, kv_cache_memory_bytes=cfg.kv_cache_memory_bytes,
            num_kv_blocks=cfg.num_kv_blocks, max_num_seqs=cfg.max_num_seqs, max_model_len=cfg.max_model_len,
        )
        if self.device.type != "cuda" or cfg.num_kv_blocks is not None or cfg.kv_cache_memory_bytes is not None:
            return kv_cache_num_blocks(self.model_config, **kw)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self._profile_peak()
        torch.cuda.synchronize()
        stats = torch.cuda.memory_stats()
        activation_peak = stats["allocated_bytes.all.peak"] - stats["allocated_bytes.all.current"]
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        return kv_cache_num_blocks(self.model_config, total_bytes=total, used_bytes=total - free + activation_peak, **kw)

    @torch.inference_mode()
    def warm_up_moe_buckets(self) -> list[int]:
        """Run the first layer's experts once per token bucket of the launch-config tables, up to
        the step budget, so Triton compiles every MoE variant at start-up: compiled on first use,
        each cost a serving step a second or more (seen as TTFT outliers in the first levels of a
        sweep). Returns the bucket sizes run."""
        from tenk.kernels.configs.nvfp4 import M_BUCKETS
        from tenk.models.layers.moe import FusedMoE

        moe = next((m for m in self.model.modules() if isinstance(m, FusedMoE)), None)
        if moe is None:
            return []
        hidden, experts, k = self.model_config.hidden_size, moe.global_num_experts, moe.top_k
        sizes = [m for m in M_BUCKETS if m <= self.config.max_num_batched_tokens]
        for m in sizes:
            x = torch.zeros(m, hidden, dtype=self.dtype, device=self.device)
            # k distinct experts per token, spread over all of them (k <= experts)
            ids = (torch.arange(m * k, device=self.device) % max(experts, k)).view(m, k) % experts
            weights = torch.full((m, k), 1.0 / k, dtype=torch.float32, device=self.device)
            moe(x, weights, ids)
        return sizes

    def allocate(self, num_blocks: int, max_model_len: int | None = None) -> None:
        """Allocate and bind the KV cache, then capture CUDA graphs (they read the cache).
        `max_model_len`: the engine's, if it lowered it to what the cache holds."""
        self.num_blocks = num_blocks
        if max_model_len is not None:
            self.config.max_model_len = max_model_len
        first = self.layers[0]
        self.kv_cache = allocate_kv_cache(
            len(self.layers), num_blocks, self.block_size, first.num_kv_heads, first.head_dim, self.kv_dtype, self.device
        )
        for i, layer in enumerate(self.layers):
            layer.k_cache = self.kv_cache[0, i]
            layer.v_cache = self.kv_cache[1, i]
        if self.device.type == "cuda":
            self.warm_up_moe_buckets()
        if self.device.type == "cuda" and not self.config.enforce_eager:
            cfg, hidden = self.config, self.model_config.hidden_size
            pool = None
            if cfg.cudagraph_mode == "full":
                self.mixed_runner = MixedGraphRunner(
                    self.model, cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.max_model_len, self.block_size,
                    hidden, self.dtype, self.device,
                )
                self.mixed_runner.capture()
                pool = self.mixed_runner.pool
            self.graph_runner = CudaGraphRunner(
                self.model, cfg.max_num_seqs, cfg.max_model_len, self.block_size, hidden, self.dtype, self.device,
                cfg.max_cudagraph_capture_size,
            )
            self.graph_runner.capture(pool)

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def launch(self, seqs: list[Sequence], num_new_tokens: list[int], decode_only: bool) -> StepHandle:
        """Queue one step on the device and return at once (on a GPU); `fetch` waits for it.
        Inputs still PENDING on the host are read from the previous launch's samples."""
        if self.workers is None:
            return self._launch(seqs, num_new_tokens, decode_only)
        with self.workers.watch():
            return self._launch(seqs, num_new_tokens, decode_only)

    def _launch(self, seqs: list[Sequence], num_new_tokens: list[int], decode_only: bool) -> StepHandle:
        host = pack_batch(seqs, num_new_tokens, self.block_size, decode_only, self._prev_rows)
        sample_seqs = [seqs[i] for i in host.sample_rows]
        sampling = (
            SamplingBatch.from_seqs(sample_seqs, self.model_config.vocab_size, self.eos_token_ids, self.device)
            if sample_seqs
            else None
        )
        logits = self.call("forward", host)
        if sampling is None:
            self._prev_rows = {}
            return StepHandle([], None, None, None)
        sampled = self.sampler(logits, sampling)
        if self.share_tokens:
            tp_broadcast(sampled.tokens, src=0)
        self._prev_tokens = sampled.tokens
        self._prev_rows = {s.seq_id: i for i, s in enumerate(sample_seqs)}
        host_samples = sampled.to_host()
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return StepHandle(sample_seqs, host_samples, sampling.num_logprobs, event)

    def forward(self, host: HostBatch) -> torch.Tensor | None:
        """Every rank: the model over one packed step, and the logits of the rows that sample
        (None if none does). Ranks > 0 then receive the tokens rank 0 sampled from them.
        Runs in inference mode: launch's on rank 0, the worker loop's on the others."""
        batch = upload_batch(host, self.device)
        if batch.pending_src is not None:
            prev = self._prev_tokens[batch.pending_src.clamp(min=0)]
            batch.input_ids = torch.where(batch.pending_src >= 0, prev, batch.input_ids)
        if self.graph_runner is not None and self.graph_runner.can_run(batch):
            hidden = self.graph_runner.run(batch)
        elif self.mixed_runner is not None and self.mixed_runner.can_run(batch):
            hidden = self.mixed_runner.run(batch)
        else:
            hidden = self.model(batch.input_ids, batch.positions, batch.meta)
        if not host.sample_rows:
            self._prev_tokens = None
            return None
        # all ranks: vocab all-gather; the sampler upcasts where it needs fp32
        logits = self.model.compute_logits(hidden[batch.logits_indices], upcast=False)
        if self.rank > 0 and self.share_tokens:
            tokens = torch.empty(len(host.sample_rows), dtype=torch.int64, device=self.device)
            self._prev_tokens = tp_broadcast(tokens, src=0)
        return logits

    def fetch(self, handle: StepHandle) -> SamplerOutput | None:
        """Wait for a launched step and return its samples as Python lists."""
        if handle.samples is None:
            return None
        if handle.event is not None:
            if self.workers is None:
                handle.event.synchronize()
            else:  # a dead rank would leave the event pending forever
                self.workers.wait_event(handle.event)
        return SamplerOutput.from_host(handle.samples, handle.num_logprobs)

    def execute(
        self, seqs: list[Sequence], num_new_tokens: list[int], decode_only: bool
    ) -> tuple[list[Sequence], SamplerOutput | None]:
        """launch + fetch: one synchronous step."""
        handle = self.launch(seqs, num_new_tokens, decode_only)
        return handle.sample_seqs, self.fetch(handle)


@dataclass
class StepHandle:
    """A launched step: which sequences sample, and their samples' host copies (valid once
    `event` has fired)."""

    sample_seqs: list[Sequence]
    samples: SampleTensors | None
    num_logprobs: list[int | None] | None
    event: "torch.cuda.Event | None"
