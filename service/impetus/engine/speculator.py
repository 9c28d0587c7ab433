"""Speculative decoding: a few requests decoded off mlx-lm's batch, with guesses.

While at most `speculative_max_batch` requests run, all decoding and none
seeded, the engine loop asks the `Speculator` to take them (`start`): it
moves their rows out of mlx-lm's batch into its own `SpecBatchCache`, and
each `step` guesses every row's next tokens (prompt lookup, `NgramIndex`,
or a draft model) and checks all the guesses in one forward pass; a row
keeps what the model agrees with. A newcomer, or guesses that no longer
pay, and the loop asks for the rows back (`stop`). It owns its rows and
their cache; what a token means for the client, the prefix cache and the
request's end is the batch's (`Batch.on_token`, `Batch.finish`).
"""

from __future__ import annotations

import logging
import math
import traceback
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import KVCache, make_prompt_cache, trim_prompt_cache

from impetus.engine.batch import Batch
from impetus.engine.draft import DraftModel
from impetus.engine.running import Running, Token
from impetus.engine.sampling import make_distribution
from impetus.engine.scheduler import Scheduler
from impetus.engine.spec_cache import SpecBatchCache
from impetus.engine.speculative import LONG_PAUSE_TOKENS, DraftLength, NgramIndex, sampled_verdict
from impetus.engine.structured import GrammarProcessor

log = logging.getLogger("impetus.engine")


@dataclass
class Row:
    """A request the speculator decodes: its row of the `SpecBatchCache`
    holds `in_cache`; `last` was sent and is not in the cache yet (the next
    forward pass feeds it)."""

    uid: int  # its key in `Batch.running` (negative: not a generator uid)
    state: Running
    in_cache: list[int]
    last: int
    draft: DraftLength
    accepted_now: int = 0  # guesses accepted in the step being emitted
    emitting: int = 0  # which token of that step `Batch.on_token` is handling


class Speculator:
    def __init__(self, batch: Batch, queue: Scheduler, settings, draft=None):
        self._batch = batch
        self._queue = queue
        # Only where every layer's cache is a plain KVCache, which trims
        # (a sliding window's rotating cache may not), and is float
        # (`SpecBatchCache` has no quantized form: kv_bits turns speculation off).
        plain = all(type(layer) is KVCache for layer in batch.new_cache())
        if settings.speculative != "off" and settings.kv_bits:
            log.info("speculative decoding is off for %s: its KV cache is in %d bits", batch.name, settings.kv_bits)
        # `draft`: guesses from a small model of the same tokenizer (impetus.engine.draft) instead.
        self._draft = DraftModel(draft.model) if settings.speculative == "draft" and draft is not None else None
        if self._draft is not None and not all(type(c) is KVCache for c in make_prompt_cache(draft.model)):
            self._draft = None
        self.enabled = plain and settings.speculative != "off"
        self.mode = ("draft" if self._draft else "ngram") if self.enabled else "off"
        self._max_draft = settings.speculative_max_draft
        self.max_batch = settings.speculative_max_batch or (16 if mx.default_device() == mx.gpu else 8)
        self.rows: list[Row] = []  # the rows of `_cache`, in order
        self._cache: SpecBatchCache | None = None

    def row_of(self, uid: int) -> Row | None:
        return next((row for row in self.rows if row.uid == uid), None)

    # -- take these / give them back -----------------------------------------

    def can_start(self) -> bool:
        """Nobody waiting, at most `speculative_max_batch` requests running,
        all decoding in mlx-lm's batch (none `joining`: the cache of one
        that is has not taken its last token in yet), none with a seed (a seeded request's draws must not
        depend on its company), and at least one worth guessing for.
        Requests with processors ride along with no guesses."""
        running = self._batch.running
        if not self.enabled or self.rows or not running or self._queue or self._batch.paused:
            return False
        if len(running) > self.max_batch:
            return False
        if any(uid < 0 or state.prefilling or state.generated < 1 or state.joining
               or (state.sampler is not None and state.handle.params.seed is not None)
               for uid, state in running.items()):
            return False
        return any(_wants_guesses(state) for state in running.values())

    def start(self) -> None:
        """Every running request out of mlx-lm's batch, into rows of our own."""
        batch = self._batch
        uids = list(batch.running)
        caches = batch.generator.remove(uids, return_prompt_caches=True)
        rows, row_caches = [], []
        for uid in uids:
            cache, tokens = caches[uid]
            trim_prompt_cache(cache, 1)  # the last token sent is fed again (as `Batch.resume` does)
            state = batch.running.pop(uid)
            for processor in state.processors:
                if isinstance(processor, GrammarProcessor):
                    processor.resume()  # it has taken in the last token already
            if state.sampler is not None and state.distribution is None:
                state.distribution = make_distribution(state.handle.params)
            if state.lookup is None:
                # The client's expected output (`prediction`) first, as if said before the prompt.
                state.lookup = NgramIndex()
                state.lookup.extend(state.handle.params.prediction)
            seen = len(state.lookup.tokens) - len(state.handle.params.prediction)
            state.lookup.extend(tokens[seen:])
            state.lookup.following = None
            row = Row(batch.next_uid(), state, list(tokens[:-1]), tokens[-1], DraftLength(self._max_draft))
            rows.append(row)
            row_caches.append(cache)
            batch.running[row.uid] = state
        self._cache = SpecBatchCache.merge(row_caches)
        self.rows = rows
        if self._draft is not None:
            with mx.stream(batch.generator.stream):
                self._draft.start([([*row.in_cache, row.last], row.state.draft_cache) for row in rows])

    def stop(self) -> None:
        """Every row back into mlx-lm's batch, from its own tokens' KV."""
        batch, rows, cache = self._batch, self.rows, self._cache
        caches = [cache.extract(i) for i in range(len(rows))]
        if self._draft is not None:  # kept for the next spell: its prompt is not prefilled again
            for i, row in enumerate(rows):
                row.state.draft_cache = self._draft.extract(i)
        self.rows, self._cache = [], None
        for row in rows:
            del batch.running[row.uid]
        uids = batch.generator.insert(
            [[row.last] for row in rows],
            max_tokens=[row.state.handle.params.max_tokens - row.state.generated for row in rows],
            caches=caches,
            all_tokens=[row.in_cache for row in rows],
            samplers=[row.state.sampler for row in rows],
            logits_processors=[row.state.processors for row in rows],
        )
        for uid, row in zip(uids, rows):
            batch.running[uid] = row.state
            row.state.joining = True

    def drop(self, rows: list[Row]) -> None:
        """Rows whose requests ended (or were cancelled): their KV goes with them."""
        if len(rows) == len(self.rows):
            self.rows, self._cache = [], None
            return
        indices = [self.rows.index(row) for row in rows]
        self._cache.remove(indices)
        if self._draft is not None:
            self._draft.remove(indices)
        self.rows = [row for row in self.rows if row not in rows]

    # -- step ----------------------------------------------------------------

    def step_or_fail(self) -> None:
        """As `Batch.step`: a failed forward pass fails its requests, not the engine."""
        try:
            self.step()
        except Exception:
            batch = self._batch
            log.exception("speculative step failed for %s", batch.name)
            batch.stats.errors += 1
            message = traceback.format_exc(limit=3)
            rows, self.rows, self._cache = self.rows, [], None
            for row in rows:
                if row.uid in batch.running:
                    batch.finish(row.state, "error", uid=row.uid, error=message)

    def step(self) -> None:
        """One forward pass over every row's last token and its guesses
        (up to K, each row its own K, none for some); a row keeps the guesses
        the model agrees with, then the model's own next token. The rejected
        positions become holes in the cache (`SpecBatchCache.keep`), so each
        row's cache holds exactly the tokens it sent but the newest."""
        batch, rows, cache = self._batch, self.rows, self._cache
        wanted, paying = _guesses_wanted(rows)
        with mx.stream(batch.generator.stream):
            if self._draft is not None:
                drafts = self._draft.propose(wanted)
            else:
                drafts = [row.state.lookup.propose(k) for row, k in zip(rows, wanted)]
            width = 1 + max(len(draft) for draft in drafts)
            inputs = mx.array([[row.last, *draft] + [0] * (width - 1 - len(draft))
                               for row, draft in zip(rows, drafts)])
            logprobs, verdicts = _check(rows, drafts, batch.model(inputs, cache=cache.layers))
        news = []
        for row, draft, (accepted, token), pays in zip(rows, drafts, verdicts, paying):
            news.append([*draft[:accepted], token])
            row.in_cache += [row.last, *draft[:accepted]]
            row.last, row.accepted_now = token, accepted
            self._learn(row, draft, accepted, pays, len(news[-1]))
            row.state.lookup.accept(news[-1])
        cache.keep([1 + accepted for accepted, _ in verdicts], width)
        if self._draft is not None:
            self._draft.settle(news, [accepted for accepted, _ in verdicts])
        batch.stats.spec_steps += 1
        batch.stats.steps += 1
        self._emit(rows, news, logprobs)
        if self.rows and all(_paused_for(row.state) >= LONG_PAUSE_TOKENS for row in self.rows):
            self.stop()  # nothing to guess for a while: mlx-lm's batch decodes faster

    def _emit(self, rows: list[Row], news: list[list[int]], logprobs: list) -> None:
        """Each row's new tokens to the batch, one at a time, until it ends."""
        batch, eos = self._batch, self._batch.tokenizer.eos_token_ids
        done = []
        for row, new, row_logprobs in zip(rows, news, logprobs):
            state = row.state
            for position, token in enumerate(new):
                row.emitting = position
                finish = "stop" if token in eos else (
                    "length" if state.generated + 1 >= state.handle.params.max_tokens else None)
                row_cache, tokens = self.row_cache(row) if finish else (None, None)
                batch.on_token(Token(row.uid, token, row_logprobs[position], finish, row_cache, tokens), state,
                               cache_of=lambda row=row: self.row_cache(row))
                if row.uid not in batch.running:  # finished: by length, end of sequence or a stop string
                    done.append(row)
                    break
        if done:
            self.drop(done)

    def _learn(self, row: Row, draft: list[int], accepted: int, paying: bool, new: int) -> None:
        """Count a row's guesses, and adapt its K and its pauses to them."""
        state, stats = row.state, self._batch.stats
        stats.spec_proposed += len(draft)
        stats.spec_accepted += accepted
        state.accepted_guesses += accepted
        state.rejected_guesses += len(draft) - accepted
        if paying:
            row.draft.update(len(draft), accepted)
            pause = state.payoff.update(len(draft), accepted)
            if pause:  # little to copy here for now
                state.speculate_from = state.generated + new + pause
        elif draft and 2 * accepted >= len(draft) and accepted >= 2:
            state.speculate_from = 0  # copying again

    def row_cache(self, row: Row) -> tuple[list, list[int]]:
        """A copy of a row's KV cache and its tokens up to the token being
        emitted: an accepted guess's KV is in the cache, the model's own last
        token's is not."""
        cache = self._cache.extract(self.rows.index(row))
        beyond = max(0, row.accepted_now - 1 - row.emitting)
        if beyond:
            trim_prompt_cache(cache, beyond)
        return cache, row.in_cache[:len(row.in_cache) - beyond]


def _wants_guesses(state: Running) -> bool:
    """No grammar (its matcher takes one token at a time), not backing
    off, and more than one token to go."""
    return (not state.has_grammar and state.generated >= state.speculate_from
            and state.handle.params.max_tokens - state.generated > 1)


def _paused_for(state: Running) -> float:
    """Tokens before a request guesses again (inf: it never will)."""
    if state.has_grammar or state.handle.params.max_tokens - state.generated <= 1:
        return math.inf
    return state.speculate_from - state.generated


def _guesses_wanted(rows: list[Row]) -> tuple[list[int], list[bool]]:
    """How many guesses each row gets, and whether it pays for them. The
    pass computes every row to the widest row's width anyway: a row
    pausing its guesses (`Payoff`) fills its padding with guesses, for
    free, and a good run of them ends its pause."""
    paying = [_wants_guesses(row.state) for row in rows]
    left = [row.state.handle.params.max_tokens - row.state.generated - 1 for row in rows]
    wanted = [min(row.draft.current, n) if pays else 0 for row, n, pays in zip(rows, left, paying)]
    widest = max(wanted)
    for i, row in enumerate(rows):
        if not paying[i] and not row.state.has_grammar:
            wanted[i] = min(widest, left[i])
    return wanted, paying


def _check(rows: list[Row], drafts: list[list[int]], logits: mx.array) -> tuple[list, list]:
    """Each row's log-probabilities and verdict (guesses kept, the token
    after them): greedy rows keep the guesses the argmax agrees with,
    sampling rows follow `sampled_verdict`. Logits processors (penalties,
    `logit_bias`) see each position with the tokens before it, as the
    generator would have shown them; a row with a grammar has no guesses
    and is processed and sampled as the generator does."""
    logprobs, chosen = [], []
    for i, (row, draft) in enumerate(zip(rows, drafts)):
        state, row_logits = row.state, logits[i, :1 + len(draft)]
        if state.processors:  # each position sees the tokens before it, guesses included
            context = [*row.in_cache, row.last, *draft]
            positions = []
            for position in range(1 + len(draft)):
                position_logits = row_logits[position:position + 1]
                before = mx.array(context[:len(row.in_cache) + 1 + position])
                for processor in state.processors:
                    position_logits = processor(before, position_logits)
                positions.append(position_logits)
            row_logits = mx.concatenate(positions, axis=0)
        logprobs.append(row_logits - mx.logsumexp(row_logits, axis=-1, keepdims=True))
        if state.sampler is None:
            chosen.append(mx.argmax(logprobs[-1], axis=-1))
        else:  # a grammar's row has no guesses: its sampler draws as in the generator
            chosen.append(state.sampler(logprobs[-1]) if state.has_grammar else None)
    mx.eval([c for c in chosen if c is not None], logprobs)
    verdicts = []
    for row, draft, row_chosen, row_logprobs in zip(rows, drafts, chosen, logprobs):
        if row_chosen is None:
            verdicts.append(sampled_verdict(row.state.distribution(row_logprobs), draft))
            continue
        row_chosen = row_chosen.tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == row_chosen[accepted]:
            accepted += 1
        verdicts.append((accepted, row_chosen[accepted]))
    return logprobs, verdicts
