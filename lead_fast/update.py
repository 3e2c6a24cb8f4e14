"""The update: one rollout batch in, ``updates_per_batch`` optimizer steps out.

Micro-batches are planned by a token budget: packed (``optim.packing``: on, or auto with flash-attn's
varlen attention), each micro-batch is one ``(1, T)`` row of concatenated sequences whose ``position_ids``
restart at 0 per sequence, the sequences spread over the same number of micro-batches on every rank by a
balanced partition; or right-padded rows sorted by length (off, or auto with sdpa/eager, where a packed
row's mask costs attention over the whole row). The old-policy pass (only when
``updates_per_batch > 1``) and the reference pass (only when ``kl_coef > 0``) run first, without a graph;
then each mini-batch accumulates gradients over its micro-batches, syncs them once, clips, and steps —
unless the loss or gradient is non-finite, in which case the step is skipped and counted.

Aggregation (``algo.loss_agg``) is over each mini-batch across all ranks: every token of sequence ``i``
carries ``world * loss_token_weights(...)[i]``, computed from every rank's lengths (FSDP2 averages
gradients over ranks, hence the ``world``), so the step does not depend on how sequences are split over
micro-batches or ranks.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from lead_fast.algo.rewards import loss_token_weights
from lead_fast.choices import LossAgg, LossNorm
from lead_fast.distributed import all_max, all_sum, step_seed
from lead_fast.errors import NonFiniteError
from lead_fast.model import RowInputs
from lead_fast.ops import LossParams, TokenInputs

if TYPE_CHECKING:
    from lead_fast.config import TrainConfig


@dataclass
class Sample:
    """One response, ready for the update."""

    prompt: list[int]
    response: list[int]
    advantage: float
    correct_ratio: float
    old_logprobs: torch.Tensor | None = None   # (len(response),) when updates_per_batch > 1
    ref_logprobs: torch.Tensor | None = None   # (len(response),) when kl_coef > 0
    rollout_logprobs: torch.Tensor | None = None   # (len(response),) the engine's, when it reports them
    version: int = 0      # training steps the generating weights had had (disaggregated: may trail the trainer's)


@dataclass
class MicroBatch:
    """One forward/backward: the backbone's rows (packed: one) and the loss head's per-token inputs (the
    response tokens, flattened in sequence order; the engine's log-probs among them when it gave them)."""

    rows: RowInputs
    tokens: TokenInputs


@dataclass(frozen=True)
class UpdateSettings:
    """How one rollout batch becomes optimizer steps; the trainer builds it once from its config."""

    updates_per_batch: int = 1
    """Optimizer steps per rollout batch (1: on-policy, no old-policy pass)."""
    micro_batch_tokens: int = 1024
    """Token budget of one micro-batch (prompt + response; real tokens when packed)."""
    packed: bool = False
    """Micro-batches are packed rows (else right-padded rows)."""
    shared_prompt: bool = False
    """Right-padded rows hold a prompt once with its responses after it (``collate_shared``); not with packed."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0: none)."""
    loss_agg: LossAgg = "token_mean"
    """``loss_token_weights``' aggregation over a mini-batch."""
    loss_norm: LossNorm = "kept"
    """``seq_mean_token_mean`` divides by the sequences kept (kept) or sampled (sampled)."""
    reweight: bool = True
    """Difficulty weights in the loss head (each token's group correct ratio is passed)."""
    seed: int = 0
    """The run's seed (mini-batch shuffling)."""
    max_nonfinite_steps: int = 3
    """Stop after this many non-finite steps in a row."""


def save_samples(path: str, samples: list[Sample], *, step: int, num_sampled: int) -> None:
    """Write one trainer rank's update inputs of step ``step`` (0-based) to ``path`` (``run.save_samples``),
    before the update fills in any log-probs of its own; written beside and renamed, so a file is whole."""
    state = {"step": step, "num_sampled": num_sampled, "samples": [
        dict(prompt=list(s.prompt), response=list(s.response), advantage=s.advantage, correct_ratio=s.correct_ratio,
             rollout_logprobs=s.rollout_logprobs, version=s.version) for s in samples]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_samples(path: str) -> tuple[list[Sample], dict]:
    """``save_samples``' file back: the samples, and ``{"step", "num_sampled"}``."""
    state = torch.load(path, weights_only=True)
    return [Sample(**s) for s in state["samples"]], {k: state[k] for k in ("step", "num_sampled")}


def seq_cost(length: int, width: int) -> int:
    """Relative compute of one sequence in a model of hidden size ``width``: the linear layers
    (length x width) plus attention (length^2)."""
    return length * width + length * length


def balanced_partition(samples: list[Sample], n_bins: int, budget: int, width: int) -> list[list[Sample]]:
    """Spread ``samples`` over at least ``n_bins`` micro-batches of at most ``budget`` real tokens (a longer
    sequence gets one of its own): largest cost (``seq_cost`` at hidden size ``width``) first, each onto the
    lightest bin it fits in, a new bin when none fits. Empty bins are dropped (the caller pads with filler
    micro-batches)."""
    bins: list[list[Sample]] = [[] for _ in range(n_bins)]
    tokens, cost = [0] * n_bins, [0] * n_bins
    for s in sorted(samples, key=lambda s: len(s.prompt) + len(s.response), reverse=True):
        length = len(s.prompt) + len(s.response)
        fits = [b for b in range(len(bins)) if not bins[b] or tokens[b] + length <= budget]
        if not fits:
            bins.append([])
            tokens.append(0)
            cost.append(0)
            fits = [len(bins) - 1]
        b = min(fits, key=lambda i: (cost[i], i))
        bins[b].append(s)
        tokens[b] += length
        cost[b] += seq_cost(length, width)
    return [b for b in bins if b]


def plan_micro_batches(samples: list[Sample], budget: int, shared_prompt: bool = False) -> list[list[Sample]]:
    """Greedy packing of padded rows by padded tokens (rows x longest row) under ``budget``, shortest row
    first; every batch holds at least one row (a row longer than the budget gets a batch of its own).
    A row is one sample, or with ``shared_prompt`` one prompt's samples (``shared_rows``): the samples of
    each prompt are brought together, and each row's samples stay contiguous in its batch."""
    if shared_prompt:
        by_prompt: dict[tuple[int, ...], list[Sample]] = {}
        for s in samples:
            by_prompt.setdefault(tuple(s.prompt), []).append(s)
        rows = [row for group in by_prompt.values() for row in shared_rows(group, budget)]
    else:
        rows = [[s] for s in samples]
    batches, cur, longest = [], [], 0
    for row in sorted(rows, key=row_length):
        length = row_length(row)
        if cur and max(longest, length) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(row)
        longest = max(longest, length)
    if cur:
        batches.append(cur)
    return [[s for row in batch for s in row] for batch in batches]


def row_length(row: list[Sample]) -> int:
    """Tokens of a shared-prompt row: the prompt once, then every response (one sample: prompt + response)."""
    return len(row[0].prompt) + sum(len(s.response) for s in row)


def shared_rows(batch: list[Sample], budget: int) -> list[list[Sample]]:
    """``batch`` cut into rows that share a prompt: runs of consecutive samples with the same prompt, a run
    cut where the row would pass ``budget`` tokens (a row holds at least one sample). Greedy from each run's
    start, so cutting an already cut run again gives the same rows."""
    rows: list[list[Sample]] = []
    for s in batch:
        last = rows[-1] if rows else None
        if last and last[0].prompt == s.prompt and row_length(last) + len(s.response) <= budget:
            last.append(s)
        else:
            rows.append([s])
    return rows


def _response_inputs(batch: list[Sample], token_weight: float | list[float], device) -> TokenInputs:
    """The per-token inputs of ``batch``'s response tokens, in sequence order; sample ``i``'s tokens get
    ``token_weight[i]`` (or all the same one) and ``seq_ids`` ``i``. Old / reference / engine log-probs only
    when every sample has them."""
    weights = token_weight if isinstance(token_weight, (list, tuple)) else [token_weight] * len(batch)

    def per_token(value):
        return torch.cat([torch.full((len(s.response),), float(value(i, s))) for i, s in enumerate(batch)]).to(device)

    def given(attr):
        parts = [getattr(s, attr) for s in batch]
        return torch.cat(parts).to(device) if all(p is not None for p in parts) else None

    tokens = TokenInputs(targets=torch.cat([torch.tensor(s.response) for s in batch]).to(device),
                         advantages=per_token(lambda i, s: s.advantage),
                         correct_ratio=per_token(lambda i, s: s.correct_ratio),
                         token_weights=per_token(lambda i, s: weights[i]), old_logprobs=given("old_logprobs"),
                         ref_logprobs=given("ref_logprobs"), rollout_logprobs=given("rollout_logprobs"),
                         seq_ids=torch.cat([torch.full((len(s.response),), i) for i, s in enumerate(batch)]).to(device))
    return tokens


def collate(batch: list[Sample], pad_id: int, device, token_weight: float | list[float]) -> MicroBatch:
    """Right-pad ``batch`` into ``(B, T)``; the response tokens of sample ``i`` get ``token_weight[i]`` (or
    all the same one)."""
    T = max(len(s.prompt) + len(s.response) for s in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    hidden_rows = []
    for b, s in enumerate(batch):
        seq = s.prompt + s.response
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        P, R = len(s.prompt), len(s.response)
        hidden_rows.append(torch.arange(b * T + P - 1, b * T + P - 1 + R))  # hidden at t predicts token t + 1
    rows = RowInputs(input_ids=ids.to(device), attention_mask=mask.to(device),
                     hidden_rows=torch.cat(hidden_rows).to(device))
    return MicroBatch(rows, _response_inputs(batch, token_weight, device))


def collate_packed(batch: list[Sample], device, token_weight: float | list[float]) -> MicroBatch:
    """Concatenate ``batch`` into one ``(1, T)`` row with ``position_ids`` restarting at 0 for each
    sequence and no attention mask (transformers derives the block-diagonal causal mask from the
    position ids); weights as in ``collate``."""
    ids, position_ids, hidden_rows, lens = [], [], [], []
    for s in batch:
        P, R = len(s.prompt), len(s.response)
        hidden_rows.append(torch.arange(len(ids) + P - 1, len(ids) + P - 1 + R))   # hidden at t predicts token t + 1
        ids += s.prompt + s.response
        position_ids.append(torch.arange(P + R))
        lens.append(P + R)
    rows = RowInputs(input_ids=torch.tensor([ids], device=device), attention_mask=None,
                     hidden_rows=torch.cat(hidden_rows).to(device),
                     position_ids=torch.cat(position_ids)[None].to(device), seq_lens=tuple(lens))
    return MicroBatch(rows, _response_inputs(batch, token_weight, device))


def collate_shared(batch: list[Sample], pad_id: int, device, token_weight: float | list[float],
                   budget: int) -> MicroBatch:
    """Right-padded rows, each a prompt once followed by its samples' responses (``shared_rows``), so the
    prompt's forward and backward run once for the row instead of once per response. A ``(B, 1, T, T)``
    boolean mask (True: attend) lets each response see the prompt and its own earlier tokens only, and each
    response's positions continue from the prompt's, as if it followed the prompt alone; the prompt's last
    hidden state predicts every response's first token. The same log-probs and gradients as ``collate``
    (up to float rounding); weights as in ``collate``, samples in ``batch`` order."""
    rows = shared_rows(batch, budget)
    T = max(row_length(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), T), dtype=torch.long)
    seg = torch.full((len(rows), T), -1, dtype=torch.long)     # 0: prompt, i + 1: the row's response i, -1: pad
    hidden_rows = []
    for b, row in enumerate(rows):
        P = len(row[0].prompt)
        ids[b, :P], pos[b, :P], seg[b, :P] = torch.tensor(row[0].prompt), torch.arange(P), 0
        o = P
        for i, s in enumerate(row):
            R = len(s.response)
            ids[b, o:o + R], pos[b, o:o + R], seg[b, o:o + R] = torch.tensor(s.response, dtype=torch.long), \
                torch.arange(P, P + R), i + 1
            # token 0 is predicted by the prompt's last position, token t by the response's own t - 1
            hidden_rows.append(b * T + torch.tensor([P - 1, *range(o, o + R - 1)][:R], dtype=torch.long))
            o += R
    # causal, and a key counts only if it is the prompt or in the query's own response (padding sees the
    # prompt and the padding before it, itself included, so no row of the mask is empty)
    mask = torch.ones(T, T, dtype=torch.bool).tril() & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None]))
    inputs = RowInputs(input_ids=ids.to(device), attention_mask=mask[:, None].to(device),
                       hidden_rows=torch.cat(hidden_rows).to(device), position_ids=pos.to(device))
    return MicroBatch(inputs, _response_inputs(batch, token_weight, device))


class Updater:
    """Runs the update for one rollout batch on this rank (a collective: every rank calls ``update``).

    ``loss``: the loss head's hyper-parameters, built once by the trainer and passed whole to every forward.
    ``ref``: the frozen reference policy when the loss has a KL term, else None."""

    def __init__(self, policy, ref, optimizer, scheduler, settings: UpdateSettings, loss: LossParams, *,
                 pad_id: int, device, rank: int, world: int, group=None, log=print):
        self.policy, self.ref, self.opt, self.sched = policy, ref, optimizer, scheduler
        self.group = group       # the trainer ranks (None: every rank); ``rank`` and ``world`` are within it
        self.settings, self.loss = settings, loss
        self.pad_id, self.device, self.rank, self.world, self.log = pad_id, device, rank, world, log
        self.width = policy.lm.config.hidden_size       # weighs sequences when packed micro-batches are balanced
        self.nonfinite_in_a_row = 0
        # Stands in on a rank with fewer micro-batches than another: FSDP2 gathers in every forward, so
        # all ranks run the same number; its tokens weigh 0.
        self.filler = Sample([pad_id], [pad_id], 0.0, 0.0, rollout_logprobs=torch.zeros(1))

    def _plan(self, samples: list[Sample]) -> list[tuple[list[Sample], bool]]:
        """Collective. Micro-batches, padded with filler ones to the largest count on any rank;
        ``(batch, real)``. Packed: as many as the rank with the most tokens needs, balanced by cost."""
        budget = self.settings.micro_batch_tokens
        if self.settings.packed:
            tokens = sum(len(s.prompt) + len(s.response) for s in samples)
            plan = balanced_partition(samples, all_max(-(-tokens // budget), self.device, self.group), budget, self.width)
        else:
            plan = plan_micro_batches(samples, budget, self.settings.shared_prompt)
        n = all_max(len(plan), self.device, self.group)
        return [(b, True) for b in plan] + [([self.filler], False)] * (n - len(plan))

    def _collate(self, batch: list[Sample], token_weight) -> MicroBatch:
        if self.settings.packed:
            mb = collate_packed(batch, self.device, token_weight)
        elif self.settings.shared_prompt:
            mb = collate_shared(batch, self.pad_id, self.device, token_weight, self.settings.micro_batch_tokens)
        else:
            mb = collate(batch, self.pad_id, self.device, token_weight)
        if not self.settings.reweight:      # no correct ratio: the head applies no difficulty weight
            mb.tokens = replace(mb.tokens, correct_ratio=None)
        return mb

    @torch.no_grad()
    def _fill_logprobs(self, model, samples: list[Sample], attr: str) -> None:
        """Set ``attr`` (``old_logprobs`` / ``ref_logprobs``) of every sample from ``model``, no graph."""
        for batch, real in self._plan(samples):
            mb = self._collate(batch, 0.0)
            lp = model(mb.rows, mb.tokens, self.loss, mode="logprobs").cpu()
            if real:
                offset = 0  # collate flattens rows in batch order, each row's response contiguous
                for s in batch:
                    setattr(s, attr, lp[offset: offset + len(s.response)])
                    offset += len(s.response)

    def update(self, samples: list[Sample], step: int, num_sampled: int | None = None) -> dict:
        """``num_sampled``: responses sampled for this rollout batch on all ranks, before groups were dropped
        (what ``algo.loss_norm=sampled`` divides by). Returns ``loss``, ``clip_frac``, ``kl``, ``entropy``,
        ``grad_norm`` (NaN when nothing was updated), ``updated``, ``nonfinite_skipped``, and the mismatch
        between the engine's log-probs and the trainer's at the weights that generated, per token over every
        rank's samples that carry ``rollout_logprobs`` (NaN when none do): ``logprob_gap`` (mean |difference|),
        ``mismatch_kl`` (k3 estimate of KL(rollout || trainer)), ``is_weight_mean`` (the correction's weight;
        the raw ratio without one) and ``is_masked_frac`` (mask modes) or ``is_truncated_frac`` (the others:
        tokens truncated; without a correction, those whose ratio exceeds the cap)."""
        n_updates = self.settings.updates_per_batch
        result = dict(loss=math.nan, clip_frac=math.nan, kl=math.nan, entropy=math.nan, grad_norm=math.nan,
                      updated=False, nonfinite_skipped=0, logprob_gap=math.nan, mismatch_kl=math.nan,
                      is_weight_mean=math.nan)
        masks = self.loss.correction.endswith("mask") or self.loss.rejection != "none"
        flag_key = "is_masked_frac" if masks else "is_truncated_frac"
        result[flag_key] = math.nan
        self._mismatch = torch.zeros(5, dtype=torch.float64)     # sums: |gap|, k3, weight, flagged; tokens
        if all_sum({"tokens": sum(len(s.response) for s in samples)}, self.device, self.group)["tokens"] == 0:
            return result  # every group on every rank was dropped
        if self.ref is not None:
            self._fill_logprobs(self.ref, samples, "ref_logprobs")
        if n_updates > 1:
            self._fill_logprobs(self.policy, samples, "old_logprobs")
        order = samples[:]
        random.Random(step_seed(self.settings.seed, step, self.rank, salt=2)).shuffle(order)
        totals = {"loss": 0.0, "clipped": 0.0, "kl": 0.0, "entropy": 0.0, "weight": 0.0}
        done = 0
        per_mini = None if num_sampled is None else num_sampled / n_updates
        for mini in (order[i::n_updates] for i in range(n_updates)):
            sums = self._accumulate(mini, per_mini)
            if sums is None:
                continue
            grad_norm = self._clip()
            if not (math.isfinite(grad_norm) and math.isfinite(sums["loss"])):
                self._skip(step, sums["loss"], grad_norm)
                result["nonfinite_skipped"] += 1
                continue
            self.nonfinite_in_a_row = 0
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            totals = {k: totals[k] + sums[k] for k in totals}
            result["grad_norm"] = grad_norm
            done += 1
        m = all_sum(dict(zip(("gap", "k3", "weight", "flagged", "tokens"), self._mismatch)), self.device, self.group)
        if m["tokens"]:
            result.update(logprob_gap=m["gap"] / m["tokens"], mismatch_kl=m["k3"] / m["tokens"],
                          is_weight_mean=m["weight"] / m["tokens"], **{flag_key: m["flagged"] / m["tokens"]})
        if done:
            w = totals["weight"]
            result.update(loss=totals["loss"] / done, clip_frac=totals["clipped"] / w, kl=totals["kl"] / w,
                          entropy=totals["entropy"] / w, updated=True)
        return result

    def _weights(self, mini: list[Sample], num_sampled: float | None) -> dict[int, float] | None:
        """Collective. Each of this rank's samples' per-token weight, keyed by ``id``; None if the
        mini-batch is empty on every rank."""
        lengths = [len(s.response) for s in mini]
        every = [None] * self.world
        dist.all_gather_object(every, lengths, group=self.group)
        flat = [n for rank_lengths in every for n in rank_lengths]
        if not flat:
            return None
        sampled = self.settings.loss_norm == "sampled" and num_sampled is not None
        w = loss_token_weights(flat, agg=self.settings.loss_agg, num_sequences=round(num_sampled) if sampled else None)
        start = sum(len(x) for x in every[: self.rank])
        return {id(s): self.world * float(w[start + i]) for i, s in enumerate(mini)}

    def _accumulate(self, mini: list[Sample], num_sampled: float | None) -> dict[str, float] | None:
        """Forward + backward over one mini-batch's micro-batches, gradients synced once at the end.
        Returns the mini-batch's loss and token-weighted sums over all ranks, or None if it is empty."""
        weights = self._weights(mini, num_sampled)
        if weights is None:
            return None
        plan = self._plan(mini)
        # kept on the device until the end: no host sync between micro-batches
        sums = {k: torch.zeros((), dtype=torch.float64, device=self.device)
                for k in ("loss", "clipped", "kl", "entropy", "weight")}
        on_policy = self.settings.updates_per_batch == 1
        # FSDP2 reduce-scatters on the last micro-batch only; an unwrapped one-rank policy has nothing to sync
        sync = getattr(self.policy, "set_requires_gradient_sync", lambda _: None)
        for k, (batch, real) in enumerate(plan):
            sync(k == len(plan) - 1)
            mb = self._collate(batch, [weights[id(s)] for s in batch] if real else 0.0)
            out = self.policy(mb.rows, mb.tokens, self.loss)
            out.loss.backward()
            if real and mb.tokens.rollout_logprobs is not None:
                # the generating weights' log-probs: this pass's own on-policy (one mini-batch, before its
                # optimizer step), else the old-policy pass's
                self._add_mismatch(out.logprobs if on_policy else mb.tokens.old_logprobs, mb.tokens.rollout_logprobs,
                                   out)
            if real:
                w = mb.tokens.token_weights.double() / self.world     # each token's share of the global aggregate
                sums["loss"] += out.loss.detach().double() / self.world
                sums["clipped"] += (out.clipped.double() * w).sum()
                sums["kl"] += (out.kl.double() * w).sum()
                sums["entropy"] += (out.entropy.double() * w).sum()
                sums["weight"] += w.sum()
        sync(True)
        return all_sum(sums, self.device, self.group)

    def _add_mismatch(self, lp_old: torch.Tensor, rollout: torch.Tensor, out) -> None:
        """Add one micro-batch's engine-vs-trainer sums (see ``update``)."""
        d = lp_old.detach().double().cpu() - rollout.double().cpu()      # log ratio, trainer over engine
        ratio = torch.exp(d)
        if out.is_weight is not None:
            weight, flagged = out.is_weight.double().cpu(), out.is_flag.cpu()
        else:      # no correction: what token_truncate would do, so the mismatch shows before it is turned on
            weight, flagged = ratio, ratio > self.loss.correction_cap
        k3 = ratio - 1 - d                    # KL(rollout || trainer) per token, sampled from the rollout
        self._mismatch += torch.stack([d.abs().sum(), k3.sum(), weight.sum(), flagged.double().sum(),
                                       torch.tensor(float(d.numel()), dtype=torch.float64)])

    def _clip(self) -> float:
        """Clip the global gradient norm (0: no clipping) and return it."""
        max_norm = self.settings.grad_clip or math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def _skip(self, step: int, loss: float, grad_norm: float) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        limit = self.settings.max_nonfinite_steps
        self.log(f"WARNING: step {step + 1}: non-finite loss or gradient (loss={loss}, grad_norm={grad_norm}); "
                 f"skipped ({self.nonfinite_in_a_row} in a row)")
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteError(f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                                 f"(run.max_nonfinite_steps={limit}); stopping")


def update_settings(cfg: "TrainConfig", device_type: str) -> tuple[UpdateSettings, LossParams]:
    """The update's settings and the loss head's hyper-parameters from a run's config, on this device type:
    what the trainer builds once, and what ``lead_fast.replay`` rebuilds to recompute a saved step."""
    algo, optim = cfg.algo, cfg.optim
    loss = LossParams(clip_low=algo.clip_low, clip_high=algo.clip_high, kl_coef=algo.kl_coef,
                      entropy_coef=algo.entropy_coef, temperature=cfg.rollout.temperature, w_min=algo.w_min,
                      w_max=algo.w_max, midpoint=algo.midpoint, steepness=algo.steepness,
                      correction=algo.correction(cfg.rollout.logprobs), correction_cap=algo.rollout_correction_cap,
                      correction_low=algo.rollout_correction_low, rejection=algo.rollout_rejection,
                      rejection_low=algo.rollout_rejection_low, rejection_high=algo.rollout_rejection_high)
    attn = cfg.model.attn_implementation
    settings = UpdateSettings(updates_per_batch=optim.updates_per_batch,
                              micro_batch_tokens=optim.micro_batch_budget(device_type), packed=optim.packed(attn),
                              shared_prompt=optim.shares_prompts(attn, device_type), grad_clip=optim.grad_clip,
                              loss_agg=algo.loss_agg, loss_norm=algo.loss_norm, reweight=algo.reweight,
                              seed=cfg.run.seed, max_nonfinite_steps=cfg.run.max_nonfinite_steps)
    return settings, loss
