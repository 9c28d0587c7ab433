"""Who gets the next batch slot: fair between tenants (keys), by priority.

The engine asks two questions of the scheduler each step:

- `order()`: the waiting requests in the order they should get a slot.
  Earlier priority first (0 interactive, 1 batch; lower first, as vLLM);
  within a priority, the tenant with the least service per unit of `share`:
  tokens it had computed recently (decayed with a 20 s half-life) plus a
  request's worth (128 tokens) for each request it has running or queued
  ahead. Within a tenant, a paused request first, then the shortest prompt
  (mlx-lm prefills prompts together, padded to the longest). This is
  weighted fair queuing over keys, with the engine's own token counts as
  the measure of service.
- `victim(candidate, running)`: when the batch is full, which running request
  to pause so that `candidate` gets a slot: one of worse priority, else one
  of a tenant holding more than its fair part of the slots
  (slots x share / sum of the shares of the tenants with work) while the
  candidate's tenant holds less. A tenant alone on the server uses every
  slot; as soon as another one has work waiting, it gets its part within
  one engine step, without waiting for a long answer to end.

Measured (benchmarks/README.md, scenario fairness): key A floods 40 streams,
key B's short request waits one step instead of A's whole batch.

`fair=False` is first come, first served with no preemption (the FIFO
baseline the benchmarks compare against).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque

from impetus.engine.request import RequestHandle, Tenant

HALF_LIFE_S = 20.0
REQUEST_COST = 128  # tokens: what one running or queued request counts before it has been served


class Scheduler:
    def __init__(self, slots: int, fair: bool = True, half_life_s: float = HALF_LIFE_S):
        self.slots = slots
        self.fair = fair
        self.half_life_s = half_life_s
        self._queues: dict[str, deque[RequestHandle]] = {}
        self._tenants: dict[str, Tenant] = {}
        self._served: dict[str, float] = {}
        self._served_at = time.monotonic()
        self.running: Counter[str] = Counter()
        self._arrivals = 0

    # -- the waiting requests ---------------------------------------------------

    def add(self, handle: RequestHandle, front: bool = False) -> None:
        """Queue a request; `front` puts it before its tenant's others (a paused one)."""
        tenant = handle.tenant
        self._tenants[tenant.id] = tenant
        queue = self._queues.setdefault(tenant.id, deque())
        if not front:
            self._arrivals += 1
            handle.arrival = self._arrivals
        queue.appendleft(handle) if front else queue.append(handle)

    def remove(self, handle: RequestHandle) -> bool:
        queue = self._queues.get(handle.tenant.id)
        if queue is None or handle not in queue:
            return False
        queue.remove(handle)
        if not queue:
            del self._queues[handle.tenant.id]
        return True

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __bool__(self) -> bool:
        return bool(self._queues)

    def handles(self) -> list[RequestHandle]:
        return [h for q in self._queues.values() for h in q]

    def waiting_by_tenant(self) -> dict[str, int]:
        """Waiting requests by tenant name."""
        counts: Counter[str] = Counter()
        for tenant_id, queue in self._queues.items():
            counts[self._tenants[tenant_id].name] += len(queue)
        return dict(counts)

    # -- service ----------------------------------------------------------------

    def charge(self, tenant: Tenant, tokens: int) -> None:
        """Count tokens computed for a tenant (prompt tokens prefilled, tokens generated)."""
        self._decay()
        self._served[tenant.id] = self._served.get(tenant.id, 0.0) + tokens

    def started(self, handle: RequestHandle) -> None:
        self.running[handle.tenant.id] += 1
        self._tenants[handle.tenant.id] = handle.tenant

    def stopped(self, handle: RequestHandle) -> None:
        self.running[handle.tenant.id] -= 1
        if self.running[handle.tenant.id] <= 0:
            del self.running[handle.tenant.id]

    def _decay(self) -> None:
        now = time.monotonic()
        factor = math.pow(0.5, (now - self._served_at) / self.half_life_s)
        self._served_at = now
        for tenant_id in list(self._served):
            self._served[tenant_id] *= factor
            if self._served[tenant_id] < 1 and tenant_id not in self.running and tenant_id not in self._queues:
                del self._served[tenant_id]

    # -- decisions --------------------------------------------------------------

    def order(self) -> list[RequestHandle]:
        """The waiting requests, first to get a slot first."""
        if not self.fair:
            return sorted(self.handles(), key=lambda h: h.arrival)
        self._decay()
        ranked = []
        for tenant_id, queue in self._queues.items():
            share = max(self._tenants[tenant_id].share, 1e-6)
            base = self._served.get(tenant_id, 0.0) + self.running[tenant_id] * REQUEST_COST
            # Paused requests first (they hold a KV cache), then the shortest prompt.
            mine = sorted(queue, key=lambda h: (h.admitted_at is None, len(h.prompt_tokens), h.arrival))
            for ahead, handle in enumerate(mine):
                ranked.append(((handle.priority, (base + ahead * REQUEST_COST) / share, handle.arrival), handle))
        ranked.sort(key=lambda item: item[0])
        return [handle for _, handle in ranked]

    def fair_slots(self, tenant_id: str) -> float:
        """A tenant's part of the batch while the tenants with work share it."""
        active = set(self.running) | set(self._queues) | {tenant_id}
        total = sum(max(self._tenants[t].share, 1e-6) for t in active if t in self._tenants)
        share = max(self._tenants[tenant_id].share, 1e-6) if tenant_id in self._tenants else 1.0
        return self.slots * share / max(total, share)

    def victim(self, candidate: RequestHandle, running: list[RequestHandle]) -> RequestHandle | None:
        """A running request to pause so `candidate` gets a slot, or None.
        `running` holds the requests that can be paused."""
        if not self.fair or not running:
            return None
        worse = [h for h in running if h.priority > candidate.priority]
        if worse:  # batch work yields to interactive work
            return max(worse, key=lambda h: (h.priority, h.admitted_at or 0.0))
        mine = candidate.tenant.id
        if self.running[mine] + 1 > math.ceil(self.fair_slots(mine)):
            return None
        over = [h for h in running
                if h.tenant.id != mine and h.priority >= candidate.priority
                and self.running[h.tenant.id] > self.fair_slots(h.tenant.id)]
        if not over:
            return None
        # The tenant furthest over its part gives up its latest request (the least work lost).
        return max(over, key=lambda h: (self.running[h.tenant.id] / self.fair_slots(h.tenant.id),
                                        h.admitted_at or 0.0))
