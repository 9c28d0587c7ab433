// Chat with a model, streamed, with the answer's time to first token and speed.

import { api, ApiError, streamChat } from "../api";
import { h, notice, number } from "../dom";

export function playground(): HTMLElement {
  const select = h("select", { name: "model", "aria-label": "Model" });
  const transcript = h("div", { class: "transcript", "data-test": "transcript" });
  const figures = h("p", { class: "muted", "data-test": "answer-figures" });
  const input = h("textarea", { name: "prompt", rows: 3, placeholder: "Ask something…", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0.7", "aria-label": "Temperature", title: "Temperature (0: always the most likely token)" });
  const history: { role: string; content: string }[] = [];

  api("GET", "/v1/models")
    .then((answer) => {
      const ids = answer.data.map((m: any) => m.id);
      const loaded = answer.data.find((m: any) => m.loaded)?.id;
      select.replaceChildren(...ids.map((id: string) => h("option", { value: id, selected: id === loaded }, id)));
    })
    .catch((error) => transcript.replaceChildren(notice("error", (error as ApiError).message)));

  const form = h(
    "form",
    { class: "composer" },
    input,
    h("div", { class: "row" }, select, h("label", { class: "muted temperature" }, "temperature", temperature), send),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = input.value.trim();
    if (!prompt) return;
    input.value = "";
    history.push({ role: "user", content: prompt });
    transcript.append(h("div", { class: "message user" }, prompt));
    const answer = h("div", { class: "message assistant", "data-test": "answer" });
    transcript.append(answer);
    send.disabled = true;
    figures.textContent = "";
    try {
      let text = "";
      const result = await streamChat(
        select.value,
        history,
        (piece) => {
          text += piece;
          answer.textContent = text;
          transcript.scrollTop = transcript.scrollHeight;
        },
        { temperature: Number(temperature.value) },
      );
      history.push({ role: "assistant", content: text });
      const tokens = result.usage?.completion_tokens ?? 0;
      const decode = result.seconds - result.ttft;
      figures.textContent = `${tokens} tokens · first token ${number(result.ttft, 2)} s · ${number(tokens > 1 && decode > 0 ? (tokens - 1) / decode : null)} tokens/s`;
    } catch (error) {
      answer.replaceWith(notice("error", (error as ApiError).message));
      history.pop();
    } finally {
      send.disabled = false;
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  return h("section", {}, h("article", { class: "card playground" }, h("h2", {}, "Playground"), transcript, figures, form));
}
