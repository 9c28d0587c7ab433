// Every model the server can serve: load, unload, pin. Below, the models already
// on this Mac (Ollama, LM Studio, the Hugging Face cache) with an Import button;
// an import runs in the background and its progress comes on the event stream.

import { api, ApiError } from "../api";
import { bytes, empty, h, notice, table } from "../dom";
import { onUpdate, state } from "../state";

export function models(): { element: HTMLElement; dispose: () => void } {
  const list = h("div", {}, empty("Loading models…"));
  const message = h("div", {});
  const found = h("div", {}, empty("Looking in Ollama, LM Studio and the Hugging Face cache…"));
  const progress = h("div", { "data-test": "imports" });
  const finished = new Set<string>();

  async function act(model: string, action: "load" | "unload", body: object = {}): Promise<void> {
    message.replaceChildren(notice("info", `${action === "load" ? "Loading" : "Unloading"} ${model}…`));
    try {
      await api("POST", `/v1/admin/models/${encodeURIComponent(model)}/${action}`, body);
      message.replaceChildren();
    } catch (error) {
      message.replaceChildren(notice("error", (error as ApiError).message));
    }
    await load();
  }

  // One GET of a list into `target`: a table with a row per item, `none` when it is empty, or the error.
  async function fill(target: HTMLElement, path: string, none: string, test: string, columns: string[],
                      row: (item: any) => Node): Promise<void> {
    try {
      const answer = await api("GET", path);
      target.replaceChildren(answer.data.length ? table({ "data-test": test }, columns, answer.data.map(row)) : empty(none));
    } catch (error) {
      target.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  // What a model does (tools in its template, reasoning, fill-in-the-middle, images, embeddings).
  function abilities(m: any): Node[] {
    const c = m.capabilities ?? {};
    const tags: string[] = [];
    if (c.tools) tags.push("tools");
    if (c.reasoning) tags.push(c.reasoning === "harmony" ? "reasoning (channels)" : "reasoning");
    if (c.fill_in_middle) tags.push("fill-in-middle");
    if (c.vision) tags.push("images");
    if (c.embeddings) tags.push("embeddings");
    if (m.type === "transcription") tags.push("speech");
    return tags.length ? tags.map((t) => h("span", { class: "tag", "data-capability": t }, t)) : [h("span", { class: "muted" }, "text")];
  }

  // Its default sampling, each with where it came from (the alias, Ollama, the GGUF, the model's card...).
  function defaults(m: any): Node {
    const entries = Object.entries(m.defaults ?? {}) as [string, any][];
    if (!entries.length) return h("span", { class: "muted" }, "–");
    return h("span", { "data-test": "defaults" }, ...entries.map(([name, d]) =>
      h("div", { "data-default": name, title: `from ${d.source}` },
        `${name} ${Array.isArray(d.value) ? d.value.join(" | ") : d.value}`, h("span", { class: "muted" }, ` · ${d.source}`))));
  }

  function modelRow(m: any): Node {
    const held = m.loaded ? h("span", { class: "tag ok" }, `loaded · ${bytes(m.memory_bytes)}`) : h("span", { class: "tag" }, "on disk");
    const actions = m.loaded
      ? [
          h("button", { class: "small", onclick: () => act(m.id, "load", { pin: !m.pinned }) }, m.pinned ? "Unpin" : "Pin"),
          h("button", { class: "small danger", onclick: () => act(m.id, "unload") }, "Unload"),
        ]
      : h("button", { class: "small", onclick: () => act(m.id, "load") }, "Load");
    return h(
      "tr",
      { "data-model": m.id },
      h("td", {}, h("strong", {}, m.id), m.alias_of ? h("span", { class: "muted" }, ` → ${m.alias_of}`) : null),
      h("td", {}, m.parameters ? `${(m.parameters / 1e6).toFixed(0)} M` : "–"),
      h("td", {}, m.quantization ?? "–"),
      h("td", {}, m.context_length ?? "–"),
      h("td", {}, ...abilities(m)),
      h("td", {}, defaults(m)),
      h("td", {}, held, m.pinned ? h("span", { class: "tag" }, "pinned") : null),
      h("td", { class: "actions" }, actions),
    );
  }

  // A model found on this Mac: where it is, what it is, whether it fits, and its Import button.
  function foundRow(d: any): Node {
    const where = h("span", { class: "muted" }, ` ${d.kind === "mlx" ? "served in place" : "GGUF"}`);
    const fits = d.fits ? null : h("span", { class: "tag warn" }, "too big");
    const button = h("button", { class: "small", onclick: () => startImport(d.source) }, "Import");
    return h("tr", { "data-source": d.source }, ...[
      [h("strong", {}, d.source), where], [d.architecture ?? "–"], [d.type ?? "–"], [bytes(d.size_bytes)],
      [bytes(d.memory_bytes), fits],
    ].map((cells) => h("td", {}, ...cells)), h("td", { class: "actions" }, button));
  }

  async function load(): Promise<void> {
    await fill(list, "/v1/models", "No models yet: impetus models import / pull adds them, or import one found below.",
      "models-table", ["model", "parameters", "quantization", "context", "does", "defaults", "state", ""], modelRow);
  }

  async function startImport(source: string): Promise<void> {
    try {
      const job = await api("POST", "/v1/admin/models/import", { source });
      message.replaceChildren(notice("info", `Importing ${source} as ${job.name}…`));
    } catch (error) {
      message.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  async function discover(): Promise<void> {
    await fill(found, "/v1/admin/models/discover", "Nothing in ~/.ollama, ~/.lmstudio or the Hugging Face cache.",
      "discovered", ["source", "architecture", "type", "size", "memory", ""], foundRow);
  }

  function showImports(): void {
    const jobs: any[] = state.live?.models?.imports ?? [];
    progress.replaceChildren(
      ...jobs.map((job) => {
        const share = job.tensors_total ? job.tensors_done / job.tensors_total : job.status === "done" ? 1 : 0;
        const text =
          job.status === "running"
            ? `${job.stage}: ${job.tensors_done}/${job.tensors_total} tensors, ${bytes(job.bytes_written)} of ${bytes(job.bytes_total)}`
            : job.status === "done"
              ? `imported as ${job.name}`
              : `failed: ${job.error}`;
        return h(
          "div",
          { class: "import", "data-test": "import-progress", "data-status": job.status, "data-source": job.source },
          h("strong", {}, job.source),
          h("progress", { max: 1, value: share }),
          h("span", { class: job.status === "failed" ? "error" : "muted" }, ` ${text}`),
        );
      }),
    );
    for (const job of jobs) {
      if (job.status !== "running" && !finished.has(job.id)) {
        finished.add(job.id);
        if (job.status === "done") message.replaceChildren();
        void load(); // the new model is listed above
      }
    }
  }

  void load();
  void discover();
  showImports();
  const unsubscribe = onUpdate(showImports);
  const element = h(
    "section",
    {},
    h("article", { class: "card" }, h("h2", {}, "Models"), message, list),
    h("article", { class: "card", "data-test": "discover-card" }, h("h2", {}, "Found on this Mac"), progress, found),
  );
  return { element, dispose: () => unsubscribe() };
}
