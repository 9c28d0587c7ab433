// Every model the server can serve: load, unload, pin.

import { api, ApiError } from "../api";
import { bytes, empty, h, notice } from "../dom";

export function models(): HTMLElement {
  const list = h("div", {}, empty("Loading models…"));
  const message = h("div", {});

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

  async function load(): Promise<void> {
    try {
      const answer = await api("GET", "/v1/models");
      if (!answer.data.length) {
        list.replaceChildren(empty("No models yet: impetus models pull / import-gguf adds them."));
        return;
      }
      list.replaceChildren(
        h(
          "table",
          { "data-test": "models-table" },
          h("thead", {}, h("tr", {}, ["model", "parameters", "quantization", "context", "state", ""].map((c) => h("th", {}, c)))),
          h(
            "tbody",
            {},
            answer.data.map((m: any) =>
              h(
                "tr",
                { "data-model": m.id },
                h("td", {}, h("strong", {}, m.id), m.alias_of ? h("span", { class: "muted" }, ` → ${m.alias_of}`) : null),
                h("td", {}, m.parameters ? `${(m.parameters / 1e6).toFixed(0)} M` : "–"),
                h("td", {}, m.quantization ?? "–"),
                h("td", {}, m.context_length ?? "–"),
                h(
                  "td",
                  {},
                  m.loaded ? h("span", { class: "tag ok" }, `loaded · ${bytes(m.memory_bytes)}`) : h("span", { class: "tag" }, "on disk"),
                  m.pinned ? h("span", { class: "tag" }, "pinned") : null,
                ),
                h(
                  "td",
                  { class: "actions" },
                  m.loaded
                    ? [
                        h("button", { class: "small", onclick: () => act(m.id, "load", { pin: !m.pinned }) }, m.pinned ? "Unpin" : "Pin"),
                        h("button", { class: "small danger", onclick: () => act(m.id, "unload") }, "Unload"),
                      ]
                    : h("button", { class: "small", onclick: () => act(m.id, "load") }, "Load"),
                ),
              ),
            ),
          ),
        ),
      );
    } catch (error) {
      list.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  void load();
  return h("section", {}, h("article", { class: "card" }, h("h2", {}, "Models"), message, list));
}
