// Eval runs: scores with 95% CIs, a paired comparison of two runs (test, p-value, flipped samples),
// and any sample's transcript.
import { api, el, append, clear, errorBox, fmt, pager, statusBadge } from "./util.js";

const PAGE = 50;
const q = encodeURIComponent;

export function render(container, [what, a, b]) {
  if (what === "run" && a) return renderRun(container, a);
  if (what === "compare" && a && b) return renderCompare(container, a, b);
  return renderList(container);
}

// A run that has not finished comes with the scores of its samples so far (summary.partial: how many of how many).
function scoreCells(run) {
  const scores = [];
  for (const [scorer, byReducer] of Object.entries(run.summary?.scores || {})) {
    for (const [reducer, s] of Object.entries(byReducer)) {
      scores.push(el("div", { class: "score" }, `${scorer} (${reducer}): `, el("b", {}, fmt.num(s.mean, 3)),
        el("span", { class: "muted" }, ` [${fmt.num(s.ci_low, 3)}, ${fmt.num(s.ci_high, 3)}] n=${s.n}`)));
    }
  }
  const partial = run.summary?.partial;
  const note = partial && el("div", { class: "partial muted" },
    `partial: ${partial.done}${partial.planned == null ? "" : "/" + partial.planned} samples, ${run.status}`);
  return [note, ...(scores.length ? scores : [el("span", { class: "muted" }, partial ? "no scores yet" : "no scores")])];
}

function renderList(container) {
  let offset = 0;
  const chosen = { a: null, b: null };
  const compareButton = el("button", { class: "primary", id: "compare", disabled: true,
    onclick: () => { location.hash = `#/evals/compare/${q(chosen.a)}/${q(chosen.b)}`; } }, "Compare A → B");
  const body = el("div", { id: "eval-runs" });
  append(container, [el("h2", {}, "Eval runs"),
    el("p", { class: "muted" }, "Pick a baseline A and a candidate B to compare them with a paired test. ", compareButton), body]);

  function pick(side, id) {
    chosen[side] = id;
    compareButton.disabled = !(chosen.a && chosen.b && chosen.a !== chosen.b);
  }

  async function load() {
    try {
      const page = await api(`/api/evals/runs?offset=${offset}&limit=${PAGE}`);
      clear(body).append(el("table", {},
        el("tr", {}, ["A", "B", "run", "task", "model", "status", "scores (mean [95% CI])", "created"].map((h) => el("th", {}, h))),
        page.runs.map((r) => el("tr", { dataset: { run: r.id } },
          el("td", {}, el("input", { type: "radio", name: "run-a", value: r.id, "aria-label": `A: ${r.id}`, onchange: () => pick("a", r.id) })),
          el("td", {}, el("input", { type: "radio", name: "run-b", value: r.id, "aria-label": `B: ${r.id}`, onchange: () => pick("b", r.id) })),
          el("td", {}, el("a", { href: `#/evals/run/${q(r.id)}` }, r.id)), el("td", {}, r.task), el("td", {}, r.model),
          el("td", {}, statusBadge(r.status)), el("td", {}, scoreCells(r)), el("td", {}, fmt.time(r.created))))),
        pager(offset, PAGE, page.total, (o) => { offset = o; load(); }));
    } catch (err) {
      clear(body).append(errorBox(err));
    }
  }
  load();
}

function renderRun(container, runId) {
  let offset = 0;
  const head = el("div"), samples = el("div", { id: "eval-samples" }), transcript = el("div", { id: "transcript" });
  append(container, [el("p", {}, el("a", { href: "#/evals" }, "‹ all eval runs")), head,
    el("div", { class: "row" }, el("div", { class: "grow" }, el("h3", {}, "Samples"), samples),
      el("div", { class: "grow" }, el("h3", {}, "Transcript"), transcript))]);
  api(`/api/evals/runs/${q(runId)}`).then((run) => append(head, [el("h2", {}, `Eval run ${run.id} `, statusBadge(run.status)),
    el("div", { class: "card" }, el("div", {}, `${run.task} on ${run.model}`),
      run.error && el("p", { class: "error run-error" }, run.error), scoreCells(run),
      el("details", {}, el("summary", {}, "config and environment"), el("pre", {}, fmt.json({ config: run.config, environment: run.environment }))))]))
    .catch((err) => head.append(errorBox(err)));

  async function load() {
    try {
      const page = await api(`/api/evals/runs/${q(runId)}/samples?offset=${offset}&limit=${PAGE}`);
      clear(samples).append(el("table", {},
        el("tr", {}, ["sample", "epoch", "status", "scores"].map((h) => el("th", {}, h))),
        page.samples.map((s) => el("tr", { class: "clickable", dataset: { sample: s.sample_id },
            onclick: () => showSample(transcript, runId, s.sample_id, s.epoch) },
          el("td", {}, s.sample_id), el("td", {}, s.epoch), el("td", {}, s.status === "error" ? el("span", { class: "error" }, s.error) : s.status),
          el("td", {}, Object.entries(s.scores).map(([k, v]) => `${k}=${v.error ? "error" : v.value}`).join(" "))))),
        pager(offset, PAGE, page.total, (o) => { offset = o; load(); }));
    } catch (err) {
      clear(samples).append(errorBox(err));
    }
  }
  load();
}

function renderCompare(container, runA, runB) {
  const body = el("div", { id: "comparison" }, el("p", { class: "muted" }, "Comparing…"));
  const sideA = el("div", { class: "grow", id: "transcript-a" }), sideB = el("div", { class: "grow", id: "transcript-b" });
  append(container, [el("p", {}, el("a", { href: "#/evals" }, "‹ all eval runs")), el("h2", {}, `Compare A = ${runA} → B = ${runB}`),
    body, el("div", { class: "split" }, sideA, sideB)]);
  api(`/api/evals/compare?a=${q(runA)}&b=${q(runB)}`).then((c) => {
    clear(body).append(el("table", {},
      el("tr", {}, ["scorer", "test", "n", "A", "B", "B − A", "95% CI of B − A", "p-value", "verdict", "flips"].map((h) => el("th", {}, h))),
      c.scorers.map((s) => el("tr", { dataset: { scorer: s.scorer } }, el("td", {}, s.scorer), el("td", {}, s.test), el("td", {}, s.n),
        el("td", {}, fmt.num(s.mean_a)), el("td", {}, fmt.num(s.mean_b)), el("td", {}, (s.diff >= 0 ? "+" : "") + fmt.num(s.diff)),
        el("td", {}, s.ci_low === null ? "–" : `[${fmt.num(s.ci_low)}, ${fmt.num(s.ci_high)}]`), el("td", { class: "p-value" }, fmt.num(s.p_value)),
        el("td", { class: s.regression ? "regression" : s.improvement ? "improvement" : "" },
          s.regression ? "REGRESSION" : s.improvement ? "improvement" : "no significant change"),
        el("td", {}, s.flips.length)))),
      ...c.scorers.map((s) => el("div", { class: "card flips" }, el("h3", {}, `${s.scorer}: ${s.flips.length} flipped samples (α = ${c.alpha})`),
        s.flips.length ? el("table", {}, el("tr", {}, el("th", {}, "sample"), el("th", {}, "A"), el("th", {}, "B")),
          s.flips.map((f) => el("tr", { class: "clickable flip", dataset: { sample: f.sample_id },
              onclick: () => { showSample(sideA, runA, f.sample_id, 0, "A"); showSample(sideB, runB, f.sample_id, 0, "B"); } },
            el("td", {}, f.sample_id), el("td", { class: f.a > f.b ? "improvement" : "regression" }, f.a),
            el("td", { class: f.b > f.a ? "improvement" : "regression" }, f.b)))) : el("p", { class: "muted" }, "none"))));
  }).catch((err) => clear(body).append(errorBox(err)));
}

async function showSample(target, runId, sampleId, epoch, side = "") {
  clear(target).append(el("p", { class: "muted" }, "Loading…"));
  try {
    const s = await api(`/api/evals/runs/${q(runId)}/samples/${q(sampleId)}?epoch=${epoch}`);
    clear(target).append(el("div", { class: "card transcript" },
      el("h3", {}, `${side ? side + ": " : ""}${s.sample_id} (epoch ${s.epoch}) in ${runId}`),
      el("div", { class: "muted" }, "input"), el("pre", {}, fmt.json(s.sample.input)),
      el("div", { class: "muted" }, "target"), el("pre", {}, fmt.json(s.sample.target ?? "")),
      el("div", { class: "muted" }, "output"), el("pre", { class: "sample-output" }, s.output ?? ""),
      s.error ? el("p", { class: "error" }, s.error) : null,
      Object.entries(s.scores).map(([k, v]) => el("div", {}, el("b", {}, k), `: ${v.error ? "error " + v.error : v.value}`,
        v.answer !== undefined ? ` · answer ${JSON.stringify(v.answer)}` : "", v.explanation ? ` · ${v.explanation}` : "")),
      el("h3", {}, `Events (${s.events.length})`), s.events.map(renderEvent)));
  } catch (err) {
    clear(target).append(errorBox(err));
  }
}

function renderEvent(event) {
  if (event.kind === "model_call") {
    return el("div", { class: "card event-model" }, el("div", { class: "item-head" }, el("b", {}, "model call"),
      ` cached=${event.cached} usage=${JSON.stringify(event.usage || {})}`),
      (event.messages || []).map((m) => el("div", { class: `msg ${m.role}` }, el("div", { class: "role" }, m.role),
        el("div", { class: "content" }, fmt.json(m.content ?? "")), m.tool_calls ? el("pre", {}, fmt.json(m.tool_calls)) : null)),
      el("div", { class: "msg assistant" }, el("div", { class: "role" }, "assistant (response)"),
        el("div", { class: "content" }, fmt.json(event.response?.content ?? "")),
        event.response?.tool_calls ? el("pre", {}, fmt.json(event.response.tool_calls)) : null));
  }
  const { kind, ...rest } = event;
  return el("div", { class: `event ${kind}` }, el("b", {}, kind || "event"), el("pre", {}, fmt.json(rest)));
}
