// Documents: the signed-in key's vector stores (files, ingest progress), uploads into
// them, and a search box that shows the chunks found and their scores. Everything
// here goes through the same OpenAI-shaped routes a client uses (/v1/files,
// /v1/vector_stores), so the page sees what that key sees, and nothing of other keys.

import { api, ApiError, upload } from "../api";
import { bytes, empty, h, notice, when } from "../dom";

export function documents(): { element: HTMLElement; dispose: () => void } {
  const list = h("div", { "data-test": "stores" }, empty("Loading stores…"));
  const detail = h("div", { "data-test": "store-detail" });
  const message = h("div", {});
  let open: string | null = null;
  let timer: number | undefined;

  const create = h(
    "form",
    { class: "inline-form", "data-test": "create-store" },
    h("label", {}, "Name", h("input", { name: "name", required: true, placeholder: "runbooks", autocomplete: "off", maxlength: 256 })),
    h("button", { type: "submit" }, "Create store"),
  );
  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const store = await api("POST", "/v1/vector_stores", { name: String(new FormData(create).get("name")).trim() });
      create.reset();
      open = store.id;
      await load();
    } catch (error) {
      message.replaceChildren(notice("error", (error as ApiError).message));
    }
  });

  async function load(): Promise<void> {
    try {
      const stores = (await api("GET", "/v1/vector_stores?limit=100")).data;
      list.replaceChildren(stores.length ? storeTable(stores) : empty("No vector stores yet. Create one, then upload files into it."));
      if (open) await showStore(open);
      const busy = stores.some((s: any) => s.file_counts.in_progress > 0);
      window.clearTimeout(timer);
      if (busy) timer = window.setTimeout(load, 1500);
    } catch (error) {
      list.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  function storeTable(stores: any[]): HTMLElement {
    return h(
      "table",
      { "data-test": "stores-table" },
      h("thead", {}, h("tr", {}, ["name", "files", "ingested", "size", "status", "last active", ""].map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        stores.map((s) =>
          h(
            "tr",
            { "data-store": s.id, "data-status": s.status },
            h("td", {}, h("strong", {}, s.name ?? s.id)),
            h("td", {}, `${s.file_counts.completed} / ${s.file_counts.total}` + (s.file_counts.failed ? ` (${s.file_counts.failed} failed)` : "")),
            h("td", {}, h("progress", { max: Math.max(1, s.file_counts.total), value: s.file_counts.completed + s.file_counts.failed })),
            h("td", {}, bytes(s.usage_bytes)),
            h("td", {}, s.status),
            h("td", {}, when(s.last_active_at)),
            h(
              "td",
              { class: "actions" },
              h("button", { class: "small ghost", onclick: () => { open = s.id; void showStore(s.id); } }, "Open"),
              h("button", {
                class: "danger small",
                onclick: async () => {
                  if (!confirm(`Delete the store "${s.name ?? s.id}" and its chunks? The files stay.`)) return;
                  await api("DELETE", `/v1/vector_stores/${s.id}`);
                  if (open === s.id) { open = null; detail.replaceChildren(); }
                  await load();
                },
              }, "Delete"),
            ),
          ),
        ),
      ),
    );
  }

  async function showStore(id: string): Promise<void> {
    const [store, files, uploads] = await Promise.all([
      api("GET", `/v1/vector_stores/${id}`),
      api("GET", `/v1/vector_stores/${id}/files?limit=100`),
      api("GET", "/v1/files?limit=100"),
    ]);
    const names: Record<string, string> = Object.fromEntries(uploads.data.map((f: any) => [f.id, f.filename]));
    const form = h(
      "form",
      { class: "inline-form", "data-test": "upload" },
      h("label", {}, "File", h("input", { name: "file", type: "file", required: true })),
      h("button", { type: "submit" }, "Upload and add"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const picked = (form.elements.namedItem("file") as HTMLInputElement).files?.[0];
      if (!picked) return;
      const data = new FormData();
      data.append("purpose", "assistants");
      data.append("file", picked, picked.name);
      try {
        const file = await upload("/v1/files", data);
        await api("POST", `/v1/vector_stores/${id}/files`, { file_id: file.id });
        await load();
      } catch (error) {
        message.replaceChildren(notice("error", (error as ApiError).message));
      }
    });
    const results = h("div", { "data-test": "search-results" });
    const search = h(
      "form",
      { class: "inline-form", "data-test": "search" },
      h("label", {}, "Search", h("input", { name: "query", required: true, placeholder: "How do we fail over?", autocomplete: "off" })),
      h("button", { type: "submit" }, "Search"),
    );
    search.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const page = await api("POST", `/v1/vector_stores/${id}/search`, { query: String(new FormData(search).get("query")), max_num_results: 5 });
        results.replaceChildren(
          page.data.length
            ? h("ol", { class: "results" }, page.data.map((r: any) =>
                h("li", { "data-file": r.file_id },
                  h("strong", {}, r.filename), " ", h("span", { class: "pill", "data-test": "score" }, r.score.toFixed(3)),
                  h("pre", { class: "chunk" }, r.content.map((c: any) => c.text).join("\n")))))
            : empty("Nothing found."),
        );
      } catch (error) {
        results.replaceChildren(notice("error", (error as ApiError).message));
      }
    });
    detail.replaceChildren(
      h("h3", {}, `${store.name ?? store.id}`, " ", h("code", {}, store.id)),
      form,
      files.data.length
        ? h("table", { "data-test": "store-files" },
            h("thead", {}, h("tr", {}, ["file", "status", "size", "added"].map((c) => h("th", {}, c)))),
            h("tbody", {}, files.data.map((f: any) =>
              h("tr", { "data-file": f.id, "data-status": f.status },
                h("td", {}, names[f.id] ?? f.id),
                h("td", {}, f.status + (f.last_error ? `: ${f.last_error.message}` : "")),
                h("td", {}, bytes(f.usage_bytes)),
                h("td", {}, when(f.created_at))))))
        : empty("No files in this store yet."),
      search,
      results,
    );
  }

  void load();
  const element = h(
    "section",
    {},
    h("article", { class: "card" }, h("h2", {}, "Vector stores"), create, message, list),
    h("article", { class: "card" }, detail),
  );
  return { element, dispose: () => window.clearTimeout(timer) };
}
