// What the event stream last said, shared by the views.

export interface Live {
  time: number;
  requests_per_s: number | null;
  tokens_per_s: number | null;
  ttft_s: number | null;
  running: number;
  waiting: number;
  waiting_by_key: Record<string, number>;
  cache_hit_ratio: number | null;
  rate_limited_total: number;
  errors_total: number;
  requests_total: number;
  generated_tokens_total: number;
  redis: string;
  models: { worker_pid: number; budget_bytes: number; used_bytes: number; loaded: any[]; available: string[]; imports?: any[] };
}

export const state: { status: any | null; statusAt: number; live: Live | null; history: Live[] } = {
  status: null,
  statusAt: 0,
  live: null,
  history: [],
};

export const HISTORY = 180; // points kept for the charts (one a second)

type Listener = () => void;
const listeners = new Set<Listener>();

export function onUpdate(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function update(event: string, data: any): void {
  if (event === "status") {
    state.status = data;
    state.statusAt = Date.now() / 1000;
  }
  if (event === "live") {
    state.live = data;
    state.history.push(data);
    if (state.history.length > HISTORY) state.history.shift();
  }
  for (const listener of listeners) listener();
}
