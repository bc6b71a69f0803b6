"""Everything the engine keeps on the device: the KV cache, the decode CUDA graphs, and the tensors of one
step. Runs the model on a scheduled batch and samples the next tokens."""
from __future__ import annotations

import torch

from ..kernels.sample import sample
from .attention import PagedDecode, PagedPrefill
from .graphs import DecodeGraphs
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
        self.graphs: DecodeGraphs | None = None

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
                self._num_blocks = int(free * self.kv_cache_memory) // self.block_bytes
            else:  # CPU: kv_cache_memory is in bytes
                self._num_blocks = int(self.kv_cache_memory) // self.block_bytes
        return self._num_blocks

    def allocate(self) -> None:
        if self.kv is None:
            c = self.model.config
            self.kv = torch.zeros(2, c.num_layers, self.num_blocks(), self.block_size, c.num_kv_heads, c.head_dim,
                                  dtype=self.model.dtype, device=self.device)

    def release(self) -> None:
        self.kv = None
        self.graphs = None  # captured graphs point at the freed cache
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def copy_block(self, src: int, dst: int) -> None:
        self.kv[:, :, dst].copy_(self.kv[:, :, src])

    # -- one step --------------------------------------------------------------------------------------
    def _slot(self, seq: Sequence, pos: int) -> int:
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _tensor(self, data, dtype) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype, pin_memory=self.device.type == "cuda").to(self.device,
                                                                                          non_blocking=True)

    @torch.inference_mode()
    def prefill(self, batch: list[tuple[Sequence, int]]) -> torch.Tensor:
        """Compute each chunk's KV; -> logits [S, V] at every chunk's last token."""
        ids, pos, slots, ctx, q_lens, k_lens, last = [], [], [], [], [], [], []
        for seq, n in batch:
            start = seq.num_computed
            ids += seq.token_ids[start:start + n]
            pos += range(start, start + n)
            slots += [self._slot(seq, p) for p in range(start, start + n)]
            ctx += [self._slot(seq, p) for p in range(start + n)]
            q_lens.append(n)
            k_lens.append(start + n)
            last.append(len(ids) - 1)
        i32 = torch.int32
        attn = PagedPrefill(self.kv, self._tensor(slots, torch.long), self._tensor(ctx, torch.long), q_lens, k_lens)
        if self.device.type == "cuda":
            attn.cu_q = self._tensor([0] + q_lens, i32).cumsum(0, dtype=i32)
            attn.cu_k = self._tensor([0] + k_lens, i32).cumsum(0, dtype=i32)
        h = self.model.hidden_states(self._tensor(ids, torch.long), self._tensor(pos, torch.long), attn)
        return self.model.compute_logits(h[self._tensor(last, torch.long)])

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Compute the KV of each sequence's last token; -> logits [B, V] for its next token."""
        width = max(len(s.block_table) for s in seqs)
        inputs = dict(
            input_ids=[s.token_ids[-1] for s in seqs],
            positions=[len(s) - 1 for s in seqs],
            slot_mapping=[self._slot(s, len(s) - 1) for s in seqs],
            context_lens=[len(s) for s in seqs],
            block_tables=[s.block_table + [0] * (width - len(s.block_table)) for s in seqs],
        )
        if self.cuda_graphs and len(seqs) <= self.max_num_seqs:
            if self.graphs is None:
                self.graphs = DecodeGraphs(self._decode_forward, self.max_num_seqs, self.max_blocks_per_seq,
                                           self.device, emulate=self.device.type != "cuda")
            return self.graphs.run(inputs)
        types = dict(input_ids=torch.long, positions=torch.long, slot_mapping=torch.long,
                     context_lens=torch.int32, block_tables=torch.int32)
        return self._decode_forward(**{k: self._tensor(v, types[k]) for k, v in inputs.items()})

    def _decode_forward(self, input_ids, positions, slot_mapping, context_lens, block_tables) -> torch.Tensor:
        attn = PagedDecode(self.kv, slot_mapping, block_tables, context_lens)
        return self.model.compute_logits(self.model.hidden_states(input_ids, positions, attn))

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[float]]:
        """One token for each row; row i is sampled with seqs[i]'s parameters, seed and offset = position,
        so a sequence's tokens do not depend on what else is in the batch."""
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
