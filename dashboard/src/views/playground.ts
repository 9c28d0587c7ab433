// Chat with a model, streamed, with the answer's time to first token and speed;
// images (picked or pasted) go with the question as chat image_url parts.

import { api, ApiError, streamChat } from "../api";
import { h, notice, number } from "../dom";

export function playground(): HTMLElement {
  const select = h("select", { name: "model", "aria-label": "Model" });
  const transcript = h("div", { class: "transcript", "data-test": "transcript" });
  const figures = h("p", { class: "muted", "data-test": "answer-figures" });
  const input = h("textarea", { name: "prompt", rows: 3, placeholder: "Ask something…", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const temperature = h("input", { name: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0.7", "aria-label": "Temperature", title: "Temperature (0: always the most likely token)" });
  const history: { role: string; content: string | object[] }[] = [];
  let images: string[] = []; // data URLs attached to the next question
  const attachments = h("div", { class: "attachments", "data-test": "attachments" });
  const picker = h("input", { type: "file", name: "image", accept: "image/*", multiple: true, hidden: true });
  const attach = h("button", { type: "button", title: "Attach an image (or paste one into the question)" }, "Image…");
  attach.addEventListener("click", () => picker.click());
  const add = (files: Iterable<File>) => {
    for (const file of files) {
      if (!file.type.startsWith("image/")) continue;
      const reader = new FileReader();
      reader.onload = () => {
        images.push(String(reader.result));
        attachments.append(h("img", { src: String(reader.result), alt: file.name, "data-test": "attachment" }));
      };
      reader.readAsDataURL(file);
    }
  };
  picker.addEventListener("change", () => {
    add(picker.files ?? []);
    picker.value = "";
  });

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
    attachments,
    h("div", { class: "row" }, select, h("label", { class: "muted temperature" }, "temperature", temperature), attach, picker, send),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = input.value.trim();
    if (!prompt) return;
    input.value = "";
    const sent = images;
    images = [];
    attachments.replaceChildren();
    const parts = sent.map((url) => ({ type: "image_url", image_url: { url } }));
    history.push({ role: "user", content: sent.length ? [...parts, { type: "text", text: prompt }] : prompt });
    transcript.append(h("div", { class: "message user" }, ...sent.map((url) => h("img", { src: url, alt: "" })), prompt));
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
  input.addEventListener("paste", (event) => {
    const files = event.clipboardData?.files;
    if (files && files.length) {
      event.preventDefault();
      add(files);
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
