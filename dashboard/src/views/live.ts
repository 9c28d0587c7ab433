// Live charts from the event stream: one point a second.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h, number } from "../dom";
import { state } from "../state";

interface Chart {
  title: string;
  unit: string;
  series: { label: string; value: (l: any) => number | null; color: string }[];
}

const CHARTS: Chart[] = [
  { title: "Requests / s", unit: "req/s", series: [{ label: "requests/s", value: (l) => l.requests_per_s, color: "#4f7cff" }] },
  { title: "Tokens / s", unit: "tok/s", series: [{ label: "generated tokens/s", value: (l) => l.tokens_per_s, color: "#16a34a" }] },
  { title: "Time to first token", unit: "s", series: [{ label: "TTFT (s)", value: (l) => l.ttft_s, color: "#d97706" }] },
  {
    title: "Running and waiting",
    unit: "requests",
    series: [
      { label: "running", value: (l) => l.running, color: "#4f7cff" },
      { label: "waiting", value: (l) => l.waiting, color: "#dc2626" },
    ],
  },
];

export function live(): { element: HTMLElement; refresh: () => void; dispose: () => void } {
  const tiles = h("div", { class: "tiles" });
  const queue = h("div", { "data-test": "waiting-by-key" });
  const charts = CHARTS.map((chart) => {
    const holder = h("div", { class: "chart", "data-test": `chart-${chart.unit}` });
    const card = h("article", { class: "card" }, h("h2", {}, chart.title), holder);
    return { chart, holder, card, plot: null as uPlot | null };
  });
  const element = h(
    "section",
    {},
    tiles,
    h("article", { class: "card" }, h("h2", {}, "Waiting for a batch slot, by key"), queue),
    h("div", { class: "grid charts" }, charts.map((c) => c.card)),
  );

  function refresh(): void {
    const l = state.live;
    tiles.replaceChildren(
      tile("Requests / s", number(l?.requests_per_s)),
      tile("Tokens / s", number(l?.tokens_per_s)),
      tile("TTFT", l?.ttft_s ? `${number(l.ttft_s, 2)} s` : "–"),
      tile("Running / waiting", l ? `${l.running} / ${l.waiting}` : "–"),
      tile("Cache hit ratio", l?.cache_hit_ratio === null || !l ? "–" : `${Math.round(l.cache_hit_ratio * 100)} %`),
      tile("Rate-limited", l ? String(l.rate_limited_total) : "–", "rate-limited"),
      tile("Requests", l ? String(l.requests_total) : "–", "requests-total"),
    );
    const waiting = Object.entries(l?.waiting_by_key ?? {});
    queue.replaceChildren(
      waiting.length
        ? h("table", {}, h("thead", {}, h("tr", {}, ["key", "waiting"].map((c) => h("th", {}, c)))),
            h("tbody", {}, waiting.map(([key, n]) => h("tr", {}, h("td", {}, key), h("td", {}, String(n))))))
        : h("p", { class: "muted" }, "Nobody is waiting."),
    );
    const times = state.history.map((p) => p.time);
    for (const c of charts) {
      const data: uPlot.AlignedData = [times, ...c.chart.series.map((s) => state.history.map((p) => s.value(p)))];
      const width = Math.max(260, c.holder.clientWidth || 260);
      if (!c.plot) {
        c.plot = new uPlot(
          {
            width,
            height: 180,
            legend: { show: true },
            scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max ?? 1)] } },
            axes: [{}, { label: c.chart.unit, size: 50 }],
            series: [{}, ...c.chart.series.map((s) => ({ label: s.label, stroke: s.color, width: 2, fill: `${s.color}22` }))],
          },
          data,
          c.holder,
        );
      } else {
        if (Math.abs(c.plot.width - width) > 4) c.plot.setSize({ width, height: 180 });
        c.plot.setData(data);
      }
      c.holder.dataset.points = String(times.length);
    }
  }

  return {
    element,
    refresh,
    dispose: () => charts.forEach((c) => c.plot?.destroy()),
  };
}

function tile(label: string, value: string, test?: string): HTMLElement {
  return h("div", { class: "tile", "data-test": test }, h("span", { class: "label" }, label), h("span", { class: "value" }, value));
}
