// Agent runs: a paged list with status filters; one run's trace (steps loaded a page at a time as you
// scroll), monitor events highlighted on the characters they flag, and approve / reject for waiting calls.
import { api, el, append, clear, errorBox, fmt, pager, statusBadge } from "./util.js";

const PAGE = 50, STEP_PAGE = 20, POLL_MS = 3000, LIST_REFRESH_MS = 5000;

export function render(container, [runId]) {
  return runId ? renderRun(container, runId) : renderList(container);
}

function renderList(container) {
  let offset = 0, status = "", timer = null;
  const filters = el("div", { class: "filters pager" });
  const body = el("div", { id: "agent-runs" });
  append(container, [el("h2", {}, "Agent runs"), filters, body]);

  async function load() {
    try {
      const page = await api(`/api/agents/runs?offset=${offset}&limit=${PAGE}${status ? `&status=${status}` : ""}`);
      const all = Object.values(page.status_counts).reduce((a, b) => a + b, 0);
      // The statuses come with the page (the agent store's list): a filter for each that some run has.
      clear(filters).append(...["", ...page.statuses].filter((s) => !s || page.status_counts[s]).map((s) =>
        el("button", { class: s === status ? "active" : "", onclick: () => { status = s; offset = 0; load(); } },
          s ? statusBadge(s) : "all", ` ${s ? page.status_counts[s] : all}`)));
      clear(body).append(
        el("table", {},
          el("tr", {}, ["run", "status", "task", "steps", "tokens", "cost", "created"].map((h) => el("th", {}, h))),
          page.runs.map((r) => el("tr", { class: "clickable", dataset: { run: r.id },
              onclick: () => { location.hash = `#/agents/${encodeURIComponent(r.id)}`; } },
            el("td", {}, el("a", { href: `#/agents/${encodeURIComponent(r.id)}` }, r.id)), el("td", {}, statusBadge(r.status)), el("td", {}, r.task.slice(0, 120)),
            el("td", {}, r.steps), el("td", {}, fmt.int(r.prompt_tokens + r.completion_tokens)),
            el("td", {}, fmt.usd(r.cost_usd)), el("td", {}, fmt.time(r.created_at))))),
        pager(offset, PAGE, page.total, (o) => { offset = o; load(); }));
    } catch (err) {
      clear(body).append(errorBox(err));
    }
    clearTimeout(timer);
    timer = setTimeout(load, LIST_REFRESH_MS);  // statuses change while runs run
  }
  load();
  return () => clearTimeout(timer);
}

function renderRun(container, runId) {
  const header = el("div", { id: "run-overview" });
  const approvals = el("div", { id: "approvals" });
  const trace = el("div", { id: "trace" });
  const more = el("button", { id: "load-more", hidden: true, onclick: () => loadSteps() }, "load more steps");
  const sentinel = el("div", { class: "muted" }, more);
  append(container, [el("p", {}, el("a", { href: "#/agents" }, "‹ all runs")), header, approvals, el("h3", {}, "Trace"), trace, sentinel]);
  let loaded = 0, total = 0, loading = false, stopped = false, timer = null, lastStatus = null, atEnd = false;

  async function loadOverview() {
    const run = await api(`/api/agents/runs/${encodeURIComponent(runId)}`);
    total = run.trace_steps;
    clear(header).append(
      el("h2", {}, `Run ${run.id} `, statusBadge(run.status)),
      el("div", { class: "card" },
        el("div", {}, el("b", {}, "task: "), run.task),
        el("div", { class: "muted" }, `model ${run.model} · tools ${run.tools.join(", ") || "none"} · ${run.steps} steps · ` +
          `${fmt.int(run.prompt_tokens)} + ${fmt.int(run.completion_tokens)} tokens · ${fmt.usd(run.cost_usd)} · ` +
          `${run.active_seconds.toFixed(1)} s active`),
        run.final_answer !== null ? el("div", {}, el("b", {}, "answer: "), el("span", { class: "pre" }, run.final_answer)) : null,
        run.stop_reason && run.status !== "completed" ? el("div", { class: "muted" }, `stop reason: ${run.stop_reason}`) : null));
    const pending = run.approvals.filter((a) => a.decision === "pending");
    clear(approvals).append(pending.length ? el("div", { class: "card" }, el("h3", {}, "Waiting for approval"),
      pending.map((a) => el("div", { class: "approval", dataset: { call: a.call_key } },
        el("div", {}, el("b", {}, a.tool), ` (${a.call_key})`), el("pre", {}, fmt.json(a.arguments)),
        el("button", { class: "primary", onclick: (e) => decide(a.call_key, true, e.target) }, "Approve"), " ",
        el("button", { onclick: (e) => decide(a.call_key, false, e.target) }, "Reject")))) : "");
    return run;
  }

  async function decide(callKey, approve, button) {
    button.disabled = true;
    try {
      await api(`/api/agents/runs/${encodeURIComponent(runId)}/approvals`,
        { method: "POST", body: JSON.stringify({ approve, call_key: callKey }) });
      await loadOverview();
    } catch (err) {
      approvals.append(errorBox(err));
    }
  }

  async function loadSteps() {
    if (loading || (loaded >= total && total)) return;
    loading = true;
    try {
      const page = await api(`/api/agents/runs/${encodeURIComponent(runId)}/steps?offset=${loaded}&limit=${STEP_PAGE}`);
      trace.querySelector(".no-steps")?.remove();
      for (const step of page.steps) trace.append(renderStep(step));
      loaded += page.steps.length;  // a live run's page can be short: the next poll fetches the rest
      if (!loaded) trace.append(el("p", { class: "muted no-steps" }, "No steps recorded yet."));
    } catch (err) {
      trace.append(errorBox(err));
    } finally {
      loading = false;
      more.hidden = loaded >= total;
      sentinel.dataset.loaded = String(Math.min(loaded, total));
    }
  }

  async function poll() {
    try {
      const run = await loadOverview();
      if (lastStatus !== null && run.status !== lastStatus) { clear(trace); loaded = 0; }  // a resumed run wrote new steps
      lastStatus = run.status;
      // The first page, then, while the end of the trace is in view, the steps a live run adds.
      if (!loaded || (atEnd && loaded < total)) await loadSteps();
      else more.hidden = loaded >= total;
      // Followed while it can still change: a failed or interrupted run too, which `lmstack agent resume` continues.
      if (!run.resumable) return;
    } catch (err) {
      header.append(errorBox(err));
      return;
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  // Lazy loading: the next page of steps is fetched when the end of the trace scrolls into view.
  const observer = new IntersectionObserver((entries) => {
    atEnd = entries.some((e) => e.isIntersecting);
    if (atEnd && loaded) loadSteps();
  });
  observer.observe(sentinel);
  poll();
  return () => { stopped = true; clearTimeout(timer); observer.disconnect(); };
}

function renderStep(step) {
  return el("div", { class: "step", dataset: { step: step.step } }, el("div", {}, el("b", {}, `step ${step.step}`)),
    step.items.map((item) => item.kind === "model" ? renderModelCall(item) : renderToolCall(item)));
}

function renderModelCall(item) {
  const a = item.attributes || {};
  const contentEvents = item.events.filter((e) => e.message_key === item.key);
  return el("div", { class: "item model", dataset: { key: item.key } },
    el("div", { class: "item-head" }, el("b", {}, "model call "), `${item.key} · ${fmt.ms(item.duration_s)} · ` +
      `${item.usage.prompt_tokens ?? "?"} + ${item.usage.completion_tokens ?? "?"} tokens · ${fmt.usd(a.cost_usd)} · ${item.finish_reason || item.status}`),
    item.text ? el("div", { class: "pre message" }, highlight(item.text, contentEvents)) : null,
    item.tool_calls.map((call) => {
      const callEvents = item.events.filter((e) => e.message_key === `${item.key}#tool_call:${call.id}`);
      return el("div", { class: "toolcall" }, el("div", { class: "item-head" }, "calls ", el("b", {}, call.name), ` (${call.id})`),
        el("div", { class: "pre" }, highlight(call.arguments, callEvents)), callEvents.map(eventLine));
    }),
    contentEvents.map(eventLine));
}

function renderToolCall(item) {
  return el("div", { class: "item tool", dataset: { key: item.key } },
    el("div", { class: "item-head" }, el("b", {}, `tool ${item.name} `), `${item.key} · ${fmt.ms(item.duration_s)} · `,
      item.ok === false ? el("span", { class: "error" }, `error: ${item.error_kind}`) : item.ok ? "ok" : item.status),
    el("div", { class: "muted" }, "arguments"), el("pre", {}, fmt.json(item.arguments)),
    el("div", { class: "muted" }, "output"), el("pre", { class: "tool-output" }, item.output ?? "(no output yet)"));
}

function eventLine(e) {
  return el("div", { class: "event" }, el("b", {}, `⚑ ${e.monitor}`), ` (${e.action}) chars ${e.start}–${e.end} `,
    el("q", {}, e.text), `: ${e.detail}`);
}

// The text with each flagged [start, end) span (in code points, as the monitors count) in a <mark>.
export function highlight(text, events) {
  const chars = Array.from(text || "");
  const cuts = new Set([0, chars.length]);
  for (const e of events) { cuts.add(Math.max(0, Math.min(e.start, chars.length))); cuts.add(Math.max(0, Math.min(e.end, chars.length))); }
  const points = [...cuts].sort((x, y) => x - y);
  const nodes = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const [lo, hi] = [points[i], points[i + 1]];
    const piece = chars.slice(lo, hi).join("");
    const covering = events.filter((e) => e.start <= lo && hi <= e.end);
    nodes.push(covering.length
      ? el("mark", { class: "flag", title: covering.map((e) => `${e.monitor}: ${e.detail}`).join("\n"),
          dataset: { monitor: covering.map((e) => e.monitor).join(" ") } }, piece)
      : document.createTextNode(piece));
  }
  return nodes;
}
