// Chat with this server's model or a configured endpoint: streamed answers, sampling controls, tool
// calls and tool results inline, and (on demand) each token coloured by its probability.
import { api, authHeaders, el, append, clear, errorBox } from "./util.js";

const state = { messages: [], endpoints: [] };  // kept across tab switches

export function render(container) {
  const endpoint = el("select", { id: "endpoint" }), model = el("select", { id: "model" });
  const field = (id, value, step) => el("input", { id, type: "number", value, step });
  const controls = {
    temperature: field("temperature", "0.7", "0.1"), top_p: field("top_p", "1", "0.05"), top_k: el("input", { id: "top_k", type: "number", step: "1", placeholder: "off" }),
    max_tokens: field("max_tokens", "256", "1"), seed: el("input", { id: "seed", type: "number", placeholder: "random" }),
  };
  const system = el("textarea", { id: "system", rows: 3, placeholder: "system prompt (optional)" });
  const tools = el("textarea", { id: "tools", rows: 5, placeholder: '[{"type":"function","function":{"name":"get_weather","parameters":{...}}}]' });
  const logprobs = el("input", { id: "logprobs", type: "checkbox" });
  const messages = el("div", { class: "messages", id: "messages" });
  const input = el("textarea", { id: "chat-input", "aria-label": "message", placeholder: "Message… (Enter sends, Shift+Enter for a new line)" });
  const send = el("button", { class: "primary", id: "send" }, "Send");
  const stop = el("button", { id: "stop", disabled: true }, "Stop");
  let abort = null;

  append(container, [el("div", { class: "chat-layout" },
    el("div", { class: "controls card" }, el("label", {}, "endpoint", endpoint), el("label", {}, "model", model),
      Object.entries(controls).map(([name, node]) => el("label", {}, name, node)), el("label", {}, "system", system),
      el("label", {}, "tools (OpenAI JSON, optional)", tools), el("label", {}, logprobs, " colour tokens by logprob"),
      el("button", { onclick: () => { state.messages = []; redraw(); } }, "New chat")),
    el("div", {}, messages, el("div", { class: "composer" }, input, el("div", {}, send, el("br"), stop))))]);

  const base = () => state.endpoints.find((e) => e.id === endpoint.value)?.base;

  async function loadModels() {
    clear(model);
    if (!base()) return;
    try {
      const listing = await api(`${base()}/models`);
      for (const m of listing.data) model.append(el("option", { value: m.id }, m.id));
    } catch (err) {
      messages.append(errorBox(err));
    }
  }

  api("/api/endpoints").then(async ({ endpoints }) => {
    state.endpoints = endpoints;
    if (!endpoints.length) messages.append(el("p", { class: "muted" }, "No chat endpoint: serve a model with `lmstack serve` or start `lmstack ui --endpoint NAME=URL`."));
    for (const e of endpoints) endpoint.append(el("option", { value: e.id }, e.label));
    await loadModels();
  }).catch((err) => messages.append(errorBox(err)));
  endpoint.addEventListener("change", loadModels);

  function redraw() { clear(messages).append(...state.messages.map((m, i) => renderMessage(m, i))); }

  function renderMessage(m, index) {
    const box = el("div", { class: `msg ${m.role}` }, el("div", { class: "role" }, m.role + (m.tool_call_id ? ` (${m.tool_call_id})` : "")));
    box.append(m.tokens && logprobs.checked ? el("div", { class: "content" }, m.tokens.map(tokenSpan)) : el("div", { class: "content" }, m.content || ""));
    for (const call of m.tool_calls || []) box.append(renderToolCall(call, index));
    return box;
  }

  function renderToolCall(call, index) {
    const answered = state.messages.some((m) => m.role === "tool" && m.tool_call_id === call.id);
    const result = el("textarea", { rows: 2, class: "tool-result-input", "aria-label": "tool result", placeholder: "tool result to send back" });
    return el("div", { class: "toolcall" }, el("div", { class: "item-head" }, "tool call ", el("b", {}, call.function.name), ` (${call.id})`),
      el("pre", {}, call.function.arguments),
      answered || index !== state.messages.length - 1 ? null : el("div", {}, result,
        el("button", { class: "send-tool-result", onclick: () => {
          state.messages.push({ role: "tool", tool_call_id: call.id, content: result.value });
          const pending = (state.messages[index].tool_calls || []).filter((c) => !state.messages.some((m) => m.tool_call_id === c.id));
          if (pending.length) redraw(); else complete();
        } }, "send result")));
  }

  function requestBody() {
    const body = { model: model.value, stream: true, stream_options: { include_usage: true },
      messages: [...(system.value.trim() ? [{ role: "system", content: system.value }] : []),
        ...state.messages.map(({ role, content, tool_calls, tool_call_id }) => ({ role, content, tool_calls, tool_call_id }))] };
    for (const [name, node] of Object.entries(controls)) if (node.value !== "") body[name] = Number(node.value);
    if (logprobs.checked) { body.logprobs = true; body.top_logprobs = 5; }
    if (tools.value.trim()) body.tools = JSON.parse(tools.value);
    return body;
  }

  async function complete() {
    const reply = { role: "assistant", content: "", tokens: [], tool_calls: [] };
    let body;
    try { body = requestBody(); } catch (err) { messages.append(errorBox(new Error(`tools: not valid JSON (${err.message})`))); return; }
    state.messages.push(reply);
    redraw();
    const view = messages.lastChild, contentNode = view.querySelector(".content");
    abort = new AbortController();
    send.disabled = true; stop.disabled = false;
    try {
      const response = await fetch(`${base()}/chat/completions`, { method: "POST", signal: abort.signal,
        headers: { "content-type": "application/json", ...authHeaders() }, body: JSON.stringify(body) });
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        throw new Error(error?.error?.message || `${response.status} ${response.statusText}`);
      }
      for await (const chunk of sseEvents(response)) {
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        const choice = chunk.choices?.[0];
        if (chunk.usage) reply.usage = chunk.usage;
        if (!choice) continue;
        const delta = choice.delta || {};
        if (delta.content) {
          reply.content += delta.content;
          const entries = choice.logprobs?.content || [{ token: delta.content, logprob: null }];
          reply.tokens.push(...entries);
          if (logprobs.checked) contentNode.append(...entries.map(tokenSpan)); else contentNode.append(delta.content);
        }
        for (const d of delta.tool_calls || []) {
          const call = reply.tool_calls[d.index] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
          call.id = d.id || call.id;
          call.function.name += d.function?.name || "";
          call.function.arguments += d.function?.arguments || "";
        }
        if (choice.finish_reason) reply.finish_reason = choice.finish_reason;
      }
    } catch (err) {
      if (err.name !== "AbortError") reply.error = err.message;
    } finally {
      abort = null; send.disabled = false; stop.disabled = true;
      if (!reply.tool_calls.length) delete reply.tool_calls;
      redraw();
      const last = messages.lastChild;
      if (reply.error) last.append(errorBox(new Error(reply.error)));
      if (reply.usage) last.append(el("div", { class: "muted usage" }, `${reply.usage.prompt_tokens} prompt + ${reply.usage.completion_tokens} completion tokens · ${reply.finish_reason || ""}`));
    }
  }

  function submit() {
    const text = input.value;
    if (!text.trim() || abort || !base()) return;
    input.value = "";
    state.messages.push({ role: "user", content: text });
    complete();
  }
  send.addEventListener("click", submit);
  stop.addEventListener("click", () => abort?.abort());
  input.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); } });
  logprobs.addEventListener("change", redraw);
  redraw();
  return () => abort?.abort();
}

// Server-sent events of an OpenAI stream: yields each `data:` JSON object until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// A token coloured from red (unlikely) to green (certain); the tooltip lists the top alternatives.
function tokenSpan(entry) {
  if (entry.logprob === null || entry.logprob === undefined) return document.createTextNode(entry.token);
  const p = Math.exp(entry.logprob);
  const tops = (entry.top_logprobs || []).map((t) => `${JSON.stringify(t.token)} ${(Math.exp(t.logprob) * 100).toFixed(1)}%`);
  return el("span", { class: "tok", style: `background: hsla(${Math.round(p * 120)}, 80%, 50%, 0.28)`,
    title: [`p = ${(p * 100).toFixed(1)}%  (logprob ${entry.logprob.toFixed(3)})`, ...tops].join("\n"),
    dataset: { logprob: entry.logprob } }, entry.token);
}
