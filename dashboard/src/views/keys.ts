// API keys: list with usage, create (the key is shown once), change limits,
// share and priority (the key's own, and its editors' autocomplete), allowed
// models and budget, revoke.

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
    ...policyFields(),
    h("label", { class: "check" }, h("input", { name: "admin", type: "checkbox" }), "admin"),
    h("button", { type: "submit" }, "Create key"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body: Record<string, unknown> = { name: String(data.get("name")).trim(), admin: data.get("admin") === "on" };
    for (const limit of ["rpm", "tpm"]) if (data.get(limit)) body[limit] = Number(data.get(limit));
    Object.assign(body, policy(data, false));
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
      h("thead", {}, h("tr", {}, ["name", "key", "scopes", "limits", "priority", "models", "budget", "requests", "tokens in / out", "last used", ""].map((c) => h("th", {}, c)))),
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
            h("td", { "data-test": "priority" }, priorityText(k)),
            h("td", { "data-test": "models" }, k.models ? k.models.join(", ") : "all"),
            h("td", { "data-test": "budget" }, k.budget ? `${k.budget.tokens} tokens / ${k.budget.period}` : "none"),
            h("td", {}, k.usage.requests),
            h("td", {}, `${k.usage.prompt_tokens} / ${k.usage.completion_tokens}`),
            h("td", {}, when(k.usage.last_used)),
            h(
              "td",
              { class: "actions" },
              h("button", { class: "small ghost", onclick: () => edit(k) }, "Change"),
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

  // Changing a key: its limits, allowed models and budget (PATCH; empty fields keep, 0 / "" reset).
  const editor = h("div", {});
  function edit(k: any): void {
    const change = h(
      "form",
      { class: "inline-form", "data-test": "change-key" },
      h("label", {}, "Requests / min", h("input", { name: "rpm", type: "number", min: 0, placeholder: String(k.rpm ?? "default") })),
      h("label", {}, "Tokens / min", h("input", { name: "tpm", type: "number", min: 0, placeholder: String(k.tpm ?? "default") })),
      ...policyFields(k),
      h("button", { type: "submit" }, `Save ${k.name}`),
      h("button", { type: "button", class: "ghost", onclick: () => editor.replaceChildren() }, "Cancel"),
    );
    change.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(change);
      const body: Record<string, unknown> = policy(data, true);
      for (const limit of ["rpm", "tpm"]) if (data.get(limit)) body[limit] = Number(data.get(limit));
      try {
        await api("PATCH", `/v1/admin/keys/${encodeURIComponent(k.name)}`, body);
        editor.replaceChildren(notice("info", `Changed ${k.name}.`));
        await load();
      } catch (error) {
        editor.append(notice("error", (error as ApiError).message));
      }
    });
    editor.replaceChildren(h("h3", {}, `Change ${k.name}`), change);
  }

  void load();
  return h(
    "section",
    {},
    h("article", { class: "card" }, h("h2", {}, "New key"), form, created),
    h("article", { class: "card" }, h("h2", {}, "Keys"), list, editor),
  );
}

// "interactive · share 1", with its autocomplete's when that differs.
function priorityText(k: any): string {
  const own = `${k.priority} · share ${k.share}`;
  return k.autocomplete_priority ? `${own} · autocomplete ${k.autocomplete_priority}` : own;
}

function choice(name: string, options: [string, string][], current: string): HTMLElement {
  return h("select", { name }, options.map(([value, label]) => h("option", { value, selected: value === current }, label)));
}

// The fields a key's policy shares between the create and change forms.
function policyFields(k?: any): HTMLElement[] {
  const period = choice("budget_period", [["month", "month"], ["week", "week"], ["day", "day"]], k?.budget?.period ?? "month");
  const levels: [string, string][] = [["interactive", "interactive"], ["batch", "batch (idle capacity)"]];
  return [
    h("label", {}, "Priority", choice("priority", levels, k?.priority ?? "interactive")),
    // Its editors' fill-in-the-middle requests (/infill, suffix): interactive while its agents run as batch.
    h("label", {}, "Autocomplete", choice("autocomplete_priority", [["", "as the key's"], ...levels], k?.autocomplete_priority ?? "")),
    h("label", {}, "Share", h("input", { name: "share", type: "number", min: 0.01, max: 1000, step: "any", placeholder: "1", value: k?.share ?? "" })),
    h("label", {}, "Models", h("input", { name: "models", placeholder: "all (or a,b)", value: k?.models?.join(",") ?? "", autocomplete: "off" })),
    h("label", {}, "Budget tokens", h("input", { name: "budget_tokens", type: "number", min: 0, placeholder: "none", value: k?.budget?.tokens ?? "" })),
    h("label", {}, "per", period),
  ];
}

function policy(data: FormData, changing: boolean): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const models = String(data.get("models") ?? "").split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length || changing) body.models = models;
  const budget = data.get("budget_tokens");
  if (budget) body.budget_tokens = Number(budget);
  else if (changing) body.budget_tokens = 0;
  if (budget || changing) body.budget_period = data.get("budget_period");
  body.priority = data.get("priority");
  const autocomplete = String(data.get("autocomplete_priority") ?? "");
  if (autocomplete || changing) body.autocomplete_priority = autocomplete; // "" in a change: as the key's
  if (data.get("share")) body.share = Number(data.get("share"));
  return body;
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
