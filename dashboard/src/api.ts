// Talking to the server: JSON calls with the operator's key, and the live event
// stream. The key is sent as a header, never in a URL; EventSource cannot send
// headers, so the stream is read with fetch() and parsed here.

const KEY_STORAGE = "impetus.adminKey";

export function savedKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function saveKey(key: string | null): void {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const key = savedKey();
  return { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

async function failure(response: Response): Promise<ApiError> {
  try {
    const body = await response.json();
    return new ApiError(body.error?.message ?? response.statusText, response.status, body.error?.code ?? null);
  } catch {
    return new ApiError(`${response.status} ${response.statusText}`, response.status);
  }
}

export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("The server cannot be reached.", 0, "unreachable");
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

// A multipart form (an upload): the browser sets its Content-Type with the boundary.
export async function upload<T = any>(path: string, form: FormData): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, { method: "POST", headers: headers(), body: form });
  } catch {
    throw new ApiError("The server cannot be reached.", 0, "unreachable");
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

// A file's bytes (a batch's output), fetched with the key and saved by the browser.
export async function download(path: string, filename: string): Promise<void> {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  link.click();
  URL.revokeObjectURL(url);
}

// The events of a text/event-stream body, as they arrive.
async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string }> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) yield { event, data: data.join("\n") };
    }
  }
}

export type StreamState = "connecting" | "live" | "reconnecting" | "unauthorized";

// Server-sent events over fetch, reconnecting after a drop (1 s, then up to 5 s).
export function subscribe(
  path: string,
  onEvent: (event: string, data: any) => void,
  onState: (state: StreamState, detail?: string) => void,
): () => void {
  let stopped = false;
  let controller: AbortController | null = null;
  let delay = 1000;

  async function connect(): Promise<void> {
    while (!stopped) {
      controller = new AbortController();
      try {
        const response = await fetch(path, { headers: headers(), signal: controller.signal, cache: "no-store" });
        if (response.status === 401 || response.status === 403) {
          const error = await failure(response);
          onState("unauthorized", error.message);
          return;
        }
        if (!response.ok || !response.body) throw await failure(response);
        delay = 1000;
        await read(response.body);
      } catch (error) {
        if (stopped) return;
      }
      if (stopped) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  async function read(body: ReadableStream<Uint8Array>): Promise<void> {
    for await (const { event, data } of serverSentEvents(body)) {
      onState("live");
      onEvent(event, JSON.parse(data));
    }
  }

  onState("connecting");
  void connect();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

// A streamed chat completion: calls onText for each piece of text.
export async function streamChat(
  model: string,
  messages: { role: string; content: string | object[] }[],
  onText: (text: string) => void,
  options: { temperature?: number; max_tokens?: number } = {},
): Promise<{ usage: any; ttft: number; seconds: number }> {
  const started = performance.now();
  let response: Response;
  try {
    response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model,
        messages,
        max_tokens: 256,
        ...options,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
  } catch {
    throw new ApiError("The server cannot be reached.", 0, "unreachable");
  }
  if (!response.ok || !response.body) throw await failure(response);
  let ttft = 0;
  let usage: any = null;
  for await (const { data } of serverSentEvents(response.body)) {
    if (data === "[DONE]") continue;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(chunk.error.message, 500, chunk.error.code);
    if (chunk.usage) usage = chunk.usage;
    const text = chunk.choices?.[0]?.delta?.content;
    if (text) {
      if (!ttft) ttft = (performance.now() - started) / 1000;
      onText(text);
    }
  }
  return { usage, ttft, seconds: (performance.now() - started) / 1000 };
}
