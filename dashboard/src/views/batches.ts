// Batches: the signed-in key's batches (OpenAI's Batch API) with their progress, a cancel
// button while they run, and their output and error files to download. The page polls while
// any batch runs; it reads the same routes a client does (/v1/batches, /v1/files).

import { api, ApiError, download } from "../api";
import { empty, h, notice, when } from "../dom";

export function batches(): { element: HTMLElement; dispose: () => void } {
  const list = h("div", { "data-test": "batches" }, empty("Loading batches…"));
  const message = h("div", {});
  let timer: number | undefined;

  async function load(): Promise<void> {
    try {
      const page = await api("GET", "/v1/batches?limit=100");
      list.replaceChildren(page.data.length ? table(page.data) : empty("No batches yet. Upload a JSONL file with purpose \"batch\" and create one with the openai SDK."));
      window.clearTimeout(timer);
      if (page.data.some((b: any) => ["validating", "in_progress", "finalizing", "cancelling"].includes(b.status))) {
        timer = window.setTimeout(load, 1500);
      }
    } catch (error) {
      list.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  function files(b: any): HTMLElement {
    const links = [["output", b.output_file_id], ["errors", b.error_file_id]].filter(([, id]) => id);
    return h("span", {}, links.map(([label, id]) =>
      h("button", {
        class: "small ghost", "data-test": `download-${label}`,
        onclick: () => download(`/v1/files/${id}/content`, `${b.id}_${label}.jsonl`).catch((e) => message.replaceChildren(notice("error", e.message))),
      }, label)));
  }

  function table(rows: any[]): HTMLElement {
    return h(
      "table",
      { "data-test": "batches-table" },
      h("thead", {}, h("tr", {}, ["batch", "endpoint", "status", "progress", "created", "files", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((b) => {
        const counts = b.request_counts;
        return h(
          "tr",
          { "data-batch": b.id, "data-status": b.status },
          h("td", {}, h("code", {}, b.id), b.metadata && Object.keys(b.metadata).length ? h("div", { class: "muted" }, JSON.stringify(b.metadata)) : ""),
          h("td", {}, b.endpoint),
          h("td", {}, b.status, b.errors ? h("div", { class: "muted" }, b.errors.data.map((e: any) => `line ${e.line}: ${e.message}`).join("; ")) : ""),
          h("td", {}, h("progress", { max: Math.max(1, counts.total), value: counts.completed + counts.failed }),
            ` ${counts.completed} done` + (counts.failed ? `, ${counts.failed} failed` : "") + ` of ${counts.total}`),
          h("td", {}, when(b.created_at)),
          h("td", {}, files(b)),
          h("td", { class: "actions" }, ["in_progress", "validating"].includes(b.status)
            ? h("button", {
                class: "danger small",
                onclick: async () => {
                  try {
                    await api("POST", `/v1/batches/${b.id}/cancel`);
                    await load();
                  } catch (error) {
                    message.replaceChildren(notice("error", (error as ApiError).message));
                  }
                },
              }, "Cancel")
            : ""),
        );
      })),
    );
  }

  void load();
  const element = h("section", {}, h("article", { class: "card" }, h("h2", {}, "Batches"), message, list));
  return { element, dispose: () => window.clearTimeout(timer) };
}
