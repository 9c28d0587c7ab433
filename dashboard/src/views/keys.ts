// API keys: list with usage, create (the key is shown once), revoke.

import { api, ApiError } from "../api";
import { empty, h, notice, when } from "../dom";

export function keys(): HTMLElement {
  const list = h("div", {}, empty("Loading keys…"));
  const created = h("div", {});
  const form = h(
    "form",
    { class: "inline-form", "data-test": "create-key" },
    h("label", {}, "Name", h("input", { name: "name", required: true, placeholder: "alice", autocomplete: "off", maxlength: 64 })),
    h("label", {}, "Requests / min", h("input", { name: "rpm", type: "number", min: 1, placeholder: "default" })),
    h("label", {}, "Tokens / min", h("input", { name: "tpm", type: "number", min: 1, placeholder: "default" })),
    h("label", { class: "check" }, h("input", { name: "admin", type: "checkbox" }), "admin"),
    h("button", { type: "submit" }, "Create key"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body: Record<string, unknown> = { name: String(data.get("name")).trim(), admin: data.get("admin") === "on" };
    for (const limit of ["rpm", "tpm"]) if (data.get(limit)) body[limit] = Number(data.get(limit));
    try {
      const answer = await api("POST", "/v1/admin/keys", body);
      form.reset();
      created.replaceChildren(shownOnce(answer.name, answer.key));
      await load();
    } catch (error) {
      created.replaceChildren(notice("error", (error as ApiError).message));
    }
  });

  async function load(): Promise<void> {
    try {
      const answer = await api("GET", "/v1/admin/keys");
      list.replaceChildren(answer.data.length ? table(answer) : empty("No keys yet. Create one for each person or tool."));
    } catch (error) {
      list.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  function table(answer: any): HTMLElement {
    return h(
      "table",
      { "data-test": "keys-table" },
      h("thead", {}, h("tr", {}, ["name", "key", "scopes", "limits", "requests", "tokens in / out", "last used", ""].map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        answer.data.map((k: any) =>
          h(
            "tr",
            { "data-key": k.name },
            h("td", {}, h("strong", {}, k.name)),
            h("td", {}, h("code", {}, `${k.prefix}…`)),
            h("td", {}, k.scopes.join(", ")),
            h("td", {}, `${k.rpm ?? answer.default_rpm} rpm · ${k.tpm ?? answer.default_tpm} tpm`),
            h("td", {}, k.usage.requests),
            h("td", {}, `${k.usage.prompt_tokens} / ${k.usage.completion_tokens}`),
            h("td", {}, when(k.usage.last_used)),
            h(
              "td",
              { class: "actions" },
              h("button", {
                class: "danger small",
                onclick: async () => {
                  if (!confirm(`Revoke the key "${k.name}"? Every client using it stops working at once.`)) return;
                  try {
                    await api("DELETE", `/v1/admin/keys/${encodeURIComponent(k.name)}`);
                    await load();
                  } catch (error) {
                    created.replaceChildren(notice("error", (error as ApiError).message));
                  }
                },
              }, "Revoke"),
            ),
          ),
        ),
      ),
    );
  }

  void load();
  return h("section", {}, h("article", { class: "card" }, h("h2", {}, "New key"), form, created), h("article", { class: "card" }, h("h2", {}, "Keys"), list));
}

function shownOnce(name: string, key: string): HTMLElement {
  const copy = h("button", { class: "small" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(key);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it";
    }
  });
  return h(
    "div",
    { class: "notice info", "data-test": "new-key" },
    h("p", {}, `The key for ${name}, shown this once. Store it now:`),
    h("div", { class: "secret" }, h("code", {}, key), copy),
  );
}
