"""Everything the engine keeps on the device: the KV cache, the block table, the decode CUDA graphs, and the
tensors of one step. Runs the model on a scheduled batch and samples the next tokens.

The block table lives on the device, one row per running sequence (its row is handed out by the scheduler):
a step writes only the entries that changed since the sequence's last step (a block appended at a block
boundary, a copy-on-write replacement) in one scatter; nothing is rebuilt from Python lists per step."""
from __future__ import annotations

import itertools

import torch

from ..kernels.sample import sample
from ..model.attention import Padding, flash_attn_varlen_func
from .attention import PagedDecode, PagedPrefill, PrefillGroup, prefill_groups
from .graphs import DecodeGraphs
from .scheduler import Batch
from .sequence import Sequence


class ModelRunner:
    def __init__(self, model, block_size: int, max_model_len: int, max_num_seqs: int,
                 num_kv_blocks: int | None, kv_cache_memory: float, cuda_graphs: bool | str):
        self.model = model
        self.device = model.device
        self.block_size = block_size
        self.max_blocks_per_seq = -(-max_model_len // block_size)
        self._num_blocks = num_kv_blocks
        self.kv_cache_memory = kv_cache_memory
        self.max_num_seqs = max_num_seqs
        self.cuda_graphs = cuda_graphs
        self.kv: torch.Tensor | None = None
        self.table: torch.Tensor | None = None  # int32 [max_num_seqs, max_blocks_per_seq]
        self.graphs: DecodeGraphs | None = None
        self.weights: tuple | None = None  # (storage, values) of the parameters last seen, see sync_weights

    # -- the KV cache ----------------------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        # read when the cache is sized: under FSDP mixed precision the gathered weights (bf16) set the dtype
        c = self.model.config
        return 2 * c.num_layers * self.block_size * c.num_kv_heads * c.head_dim * self.model.dtype.itemsize

    def num_blocks(self) -> int:
        if self._num_blocks is None:
            if self.device.type == "cuda":
                # a fraction of the memory left after the weights (and whatever else is already allocated)
                free, _ = torch.cuda.mem_get_info(self.device)
                self._num_blocks = int(free * self.kv_cache_memory) // self.block_bytes - 1
            else:  # CPU: kv_cache_memory is in bytes
                self._num_blocks = int(self.kv_cache_memory) // self.block_bytes - 1
        return self._num_blocks

    def allocate(self) -> None:
        if self.kv is None:
            c, n = self.model.config, self.num_blocks()
            # one block more than the block manager hands out: block n stays zero, padding reads it
            self.kv = torch.zeros(2, c.num_layers, n + 1, self.block_size, c.num_kv_heads, c.head_dim,
                                  dtype=self.model.dtype, device=self.device)
            self.table = torch.full((self.max_num_seqs, self.max_blocks_per_seq), n, dtype=torch.int32,
                                    device=self.device)

    def release(self) -> None:
        self.kv = self.table = None
        self.graphs = None  # captured graphs point at the freed cache
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the weights -----------------------------------------------------------------------------------
    def sync_weights(self) -> bool:
        """Whether the parameters may differ from the last call's. The one place that notices: the engine
        drops its prefix cache on True (cached KV came from the old values), and the decode graphs are
        dropped here when any parameter's storage moved (a graph replays the addresses it captured). Storage
        moves when FSDP gathers again (leaving and re-entering trainer.distributed.gathered()), on
        load_state_dict(assign=True) or a `.data =` swap; values change in place on an optimizer step
        (weights_version, and every in-place op bumps the tensor's version counter) or load_state_dict."""
        params = list(self.model.parameters())
        storage = tuple(map(_address, params))
        values = (self.model.weights_version, tuple(p._version for p in params))
        if self.weights is not None and self.weights[0] != storage:
            self.graphs = None
        changed, self.weights = self.weights != (storage, values), (storage, values)
        return changed

    # -- one step --------------------------------------------------------------------------------------
    def _tensor(self, data, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, pin_memory=self.device.type == "cuda").to(self.device,
                                                                                          non_blocking=True)

    @torch.inference_mode()
    def run(self, batch: Batch) -> torch.Tensor:
        """-> logits [R, V] for the R sequences of the batch whose KV this step completes, in batch order."""
        if batch.copies:  # copy-on-write of shared blocks, before this step writes into the copies
            src, dst = self._tensor(batch.copies).unbind(1)
            self.kv[:, :, dst] = self.kv[:, :, src]
        self._sync_tables(batch.seqs)
        if batch.prefill:
            return self._prefill(batch.seqs, batch.num_tokens)
        return self._decode(batch.seqs)

    def _sync_tables(self, seqs: list[Sequence]) -> None:
        rows, cols, blocks = [], [], []
        for s in seqs:
            n = len(s.block_table)
            if s.synced < n:
                rows += [s.row] * (n - s.synced)
                cols += range(s.synced, n)
                blocks += s.block_table[s.synced:]
                s.synced = n
        if rows:
            self.table[self._tensor(rows), self._tensor(cols)] = self._tensor(blocks, torch.int32)

    def _prefill(self, seqs: list[Sequence], counts: list[int]) -> torch.Tensor:
        """Compute each chunk's KV; -> logits at the last token of every sequence the chunk completes."""
        starts = [s.num_computed for s in seqs]
        k_lens = [a + n for a, n in zip(starts, counts)]
        ids = list(itertools.chain.from_iterable(s.token_ids[a:a + n] for s, a, n in zip(seqs, starts, counts)))
        done = [i for i, (s, k) in enumerate(zip(seqs, k_lens)) if k == len(s)]
        meta = self._tensor([starts, counts, [s.row for s in seqs], list(itertools.accumulate([0] + counts[:-1]))])
        start, count, rows, first = meta.unbind(0)  # [S] each; first: a sequence's first token in the packing
        bs = self.block_size
        seq_of = torch.repeat_interleave(torch.arange(len(seqs), device=self.device), count)  # [N]
        positions = start[seq_of] + torch.arange(len(ids), device=self.device) - first[seq_of]
        table = self.table.index_select(0, rows).long()  # [S, max_blocks]
        slots = table[seq_of, positions // bs] * bs + positions % bs
        flash = None
        if flash_attn_varlen_func is not None and self.device.type == "cuda" and \
                self.model.dtype in (torch.float16, torch.bfloat16):
            t = torch.arange(max(k_lens), device=self.device)
            ctx = (table[:, t // bs] * bs + t % bs)[t < (start + count)[:, None]]
            i32 = torch.int32
            flash = (ctx, self._tensor([0] + counts, i32).cumsum(0, dtype=i32),
                     self._tensor([0] + k_lens, i32).cumsum(0, dtype=i32), max(counts), max(k_lens))
            groups = []
        else:
            parts = prefill_groups(counts, k_lens)
            parts = [list(range(len(seqs)))] if len(parts) == 1 else parts  # one group: in packing order
            groups = [self._group(g, starts, counts, k_lens, start, count, first, table) for g in parts]
            if len(groups) == 1:
                groups[0].tokens = None  # every token, as packed
        attn = PagedPrefill(self.kv, slots, groups, flash)
        h = self.model.hidden_states(self._tensor(ids), positions, attn)
        last = torch.cumsum(count, 0) - 1
        return self.model.compute_logits(h[last[self._tensor(done)]])

    def _group(self, g: list[int], starts, counts, k_lens, start, count, first, table) -> PrefillGroup:
        # the sequences g of a prefill batch as one padded SDPA call: queries [len(g), Tq], contexts [len(g), Tk]
        gi = self._tensor(g)
        tq, tk = max(counts[i] for i in g), max(k_lens[i] for i in g)
        q = torch.arange(tq, device=self.device)
        valid = q < count[gi][:, None]  # [g, Tq]
        queries = Padding(valid.view(-1).nonzero().squeeze(1), len(g), tq)
        tokens = (first[gi][:, None] + q)[valid]  # packed indices of the group's tokens, in grid order
        pos_grid = start[gi][:, None] + q  # [g, Tq]
        if not any(starts[i] for i in g):  # no earlier tokens: each context is the sequence's own new tokens
            return PrefillGroup(tokens, queries, None, None if queries.dense else self._mask(pos_grid, count[gi], tk))
        t = torch.arange(tk, device=self.device)
        bs, null = self.block_size, self.kv.shape[2] - 1
        k_len = start[gi] + count[gi]
        context = torch.where(t < k_len[:, None], table[gi][:, t // bs] * bs + t % bs, null * bs)
        return PrefillGroup(tokens, queries, context, self._mask(pos_grid, k_len, tk))

    def _mask(self, pos_grid: torch.Tensor, k_lens: torch.Tensor, width: int) -> torch.Tensor:
        # bool [g, 1, Tq, Tk]: the query at position p sees keys t <= p of its own context (t < k_len);
        # padding queries sit past k_len and see the whole context, so no row is empty
        t = torch.arange(width, device=self.device)
        return ((t <= pos_grid[:, :, None]) & (t < k_lens[:, None, None]))[:, None]

    def decode_inputs(self, seqs: list[Sequence]) -> torch.Tensor:
        # -> int64 [5, B] on the device (graphs.FIELDS): O(B) host work, one copy; the block tables stay put
        bs, last = self.block_size, [len(s) - 1 for s in seqs]
        return self._tensor([[s.token_ids[-1] for s in seqs], last,
                             [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, last)],
                             [p + 1 for p in last], [s.row for s in seqs]])

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Compute the KV of each sequence's last token; -> logits [B, V] for its next token."""
        inputs = self.decode_inputs(seqs)
        if self.cuda_graphs and len(seqs) <= self.max_num_seqs:
            if self.graphs is None:
                self.graphs = DecodeGraphs(self._decode_forward, list(self.model.parameters()), self.max_num_seqs,
                                           self.device, emulate=self.device.type != "cuda")
            return self.graphs.run(inputs)
        return self._decode_forward(*inputs)

    def _decode_forward(self, input_ids, positions, slot_mapping, context_lens, rows) -> torch.Tensor:
        attn = PagedDecode(self.kv, slot_mapping, self.table.index_select(0, rows), context_lens)
        return self.model.compute_logits(self.model.hidden_states(input_ids, positions, attn))

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float]]:
        """One token for each row; row i is sampled with seqs[i]'s parameters, seed and offset = position,
        so a sequence's tokens do not depend on what else is in the batch."""
        if logits.dtype not in (torch.float32, torch.bfloat16):
            logits = logits.float()  # float16 models: the sampler reads float32 or bfloat16
        p = [s.params for s in seqs]
        tokens, logprobs = sample(
            logits,
            self._tensor([x.temperature for x in p], torch.float32),
            self._tensor([x.top_k for x in p], torch.int32),
            self._tensor([x.top_p for x in p], torch.float32),
            self._tensor([x.min_p for x in p], torch.float32),
            self._tensor([s.seed for s in seqs], torch.int64),
            self._tensor([len(s) for s in seqs], torch.int64),
        )
        return tokens.tolist(), logprobs.tolist()

    @torch.inference_mode()
    def logprobs_of(self, logits: torch.Tensor, token_ids: torch.Tensor) -> list[list[float]]:
        # next_token_logprobs: log p(t) of each candidate t, [R, len(token_ids)]
        return torch.log_softmax(logits.float(), dim=-1)[:, token_ids.to(logits.device)].tolist()


def _address(p: torch.Tensor) -> int:
    # a sharded parameter (FSDP2's DTensor, outside trainer.distributed.gathered()) has no storage of its own
    return p.to_local().data_ptr() if hasattr(p, "to_local") else p.data_ptr()
