// Usage over the last 30 days: a chart of tokens per day for each key, and a
// table per key and model that sorts by any column.

import { api, ApiError } from "../api";
import { empty, h, notice } from "../dom";

const DAYS = 30;
const SVG = "http://www.w3.org/2000/svg";
const COLUMNS = ["key", "model", "requests", "prompt_tokens", "completion_tokens", "cached_tokens"] as const;
type Column = (typeof COLUMNS)[number];

interface Row {
  date: string;
  key: string;
  model: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
}

function days(until: string): string[] {
  const last = new Date(`${until}T12:00:00Z`);
  return Array.from({ length: DAYS }, (_, i) => new Date(last.getTime() - (DAYS - 1 - i) * 86400_000).toISOString().slice(0, 10));
}

// Bars of prompt + completion tokens per day, scaled to the key's busiest day.
function chart(key: string, perDay: number[], dates: string[]): SVGSVGElement {
  const width = 360, height = 70, gap = 2;
  const most = Math.max(1, ...perDay);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "bars");
  svg.setAttribute("data-test", `usage-chart-${key}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${key}: tokens per day over the last ${DAYS} days`);
  const barWidth = width / perDay.length - gap;
  perDay.forEach((tokens, i) => {
    const bar = document.createElementNS(SVG, "rect");
    const barHeight = tokens ? Math.max(2, (tokens / most) * (height - 4)) : 0;
    bar.setAttribute("x", String(i * (barWidth + gap)));
    bar.setAttribute("y", String(height - barHeight));
    bar.setAttribute("width", String(barWidth));
    bar.setAttribute("height", String(barHeight));
    bar.setAttribute("data-tokens", String(tokens));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${dates[i]}: ${tokens.toLocaleString()} tokens`;
    bar.append(title);
    svg.append(bar);
  });
  return svg;
}

export function usage(): HTMLElement {
  const charts = h("div", { class: "grid" }, empty("Loading usage…"));
  const table = h("div", {});
  let rows: { key: string; model: string; [metric: string]: any }[] = [];
  let sortBy: Column = "completion_tokens";
  let descending = true;

  function renderTable(): void {
    const sorted = [...rows].sort((a, b) => {
      const order = typeof a[sortBy] === "number" ? a[sortBy] - b[sortBy] : String(a[sortBy]).localeCompare(String(b[sortBy]));
      return descending ? -order : order;
    });
    table.replaceChildren(
      h(
        "table",
        { "data-test": "usage-table" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            COLUMNS.map((column) =>
              h(
                "th",
                { "aria-sort": column === sortBy ? (descending ? "descending" : "ascending") : "none" },
                h("button", {
                  class: "sort",
                  "data-column": column,
                  onclick: () => {
                    descending = column === sortBy ? !descending : true;
                    sortBy = column;
                    renderTable();
                  },
                }, column.replace("_", " ") + (column === sortBy ? (descending ? " ▼" : " ▲") : "")),
              ),
            ),
          ),
        ),
        h("tbody", {}, sorted.map((row) => h("tr", { "data-row": `${row.key}/${row.model}` }, COLUMNS.map((c) => h("td", {}, typeof row[c] === "number" ? row[c].toLocaleString() : row[c]))))),
      ),
    );
  }

  async function load(): Promise<void> {
    try {
      const since = new Date(Date.now() - (DAYS - 1) * 86400_000).toISOString().slice(0, 10);
      const answer = await api("GET", `/v1/admin/usage?since=${since}`);
      const data: Row[] = answer.data;
      if (!data.length) {
        charts.replaceChildren(empty("No usage in the last 30 days."));
        table.replaceChildren();
        return;
      }
      const dates = days(answer.until);
      const byKey = new Map<string, number[]>();
      const totals = new Map<string, any>();
      for (const row of data) {
        const perDay = byKey.get(row.key) ?? new Array(DAYS).fill(0);
        const index = dates.indexOf(row.date);
        if (index >= 0) perDay[index] += row.prompt_tokens + row.completion_tokens;
        byKey.set(row.key, perDay);
        const id = `${row.key}/${row.model}`;
        const total = totals.get(id) ?? { key: row.key, model: row.model, requests: 0, prompt_tokens: 0, completion_tokens: 0, cached_tokens: 0 };
        for (const metric of ["requests", "prompt_tokens", "completion_tokens", "cached_tokens"]) total[metric] += (row as any)[metric];
        totals.set(id, total);
      }
      charts.replaceChildren(
        ...[...byKey.entries()].sort().map(([key, perDay]) =>
          h(
            "figure",
            { class: "usage-key" },
            h("figcaption", {}, h("strong", {}, key), h("span", { class: "muted" }, ` ${perDay.reduce((a, b) => a + b, 0).toLocaleString()} tokens`)),
            chart(key, perDay, dates),
          ),
        ),
      );
      rows = [...totals.values()];
      renderTable();
    } catch (error) {
      charts.replaceChildren(notice("error", (error as ApiError).message));
    }
  }

  void load();
  return h(
    "section",
    {},
    h("article", { class: "card" }, h("h2", {}, "Tokens per day, by key (last 30 days)"), charts),
    h("article", { class: "card" }, h("h2", {}, "By key and model"), h("p", { class: "muted" }, "Click a column to sort. impetus usage --csv exports the same."), table),
  );
}
