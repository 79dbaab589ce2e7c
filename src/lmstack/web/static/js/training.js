// Training runs: the run dirs under the runs root, and one run's live curves, config and samples.
import { api, el, append, clear, errorBox, fmt } from "./util.js";
import { lineChart, smooth } from "./chart.js";

const POLL_MS = 2000;

export function render(container, [name]) {
  return name ? renderRun(container, name) : renderList(container);
}

function renderList(container) {
  append(container, [el("h2", {}, "Training runs")]);
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  container.append(body);
  api("/api/training/runs").then(({ root, runs }) => {
    clear(body);
    if (!runs.length) return body.append(el("p", { class: "muted" }, `No run dirs under '${root}'.`));
    body.append(el("p", { class: "muted" }, `${runs.length} run${runs.length === 1 ? "" : "s"} under '${root}'`), el("table", { id: "training-runs" },
      el("tr", {}, el("th", {}, "run"), el("th", {}, "state"), el("th", {}, "step"), el("th", {}, "loss"), el("th", {}, "updated")),
      runs.map((r) => el("tr", { class: "clickable", onclick: () => { location.hash = `#/training/${encodeURIComponent(r.name)}`; } },
        el("td", {}, el("a", { href: `#/training/${encodeURIComponent(r.name)}` }, r.name)), el("td", {}, r.live ? el("span", { class: "badge live" }, "live") : "idle"),
        el("td", {}, fmt.int(r.step)), el("td", {}, fmt.num(r.loss)), el("td", {}, fmt.ago(r.updated_at))))));
  }).catch((err) => clear(body).append(errorBox(err)));
}

function renderRun(container, name) {
  const records = [];
  let offset = 0, file = null, timer = null, stopped = false, valCount = 0;
  const charts = el("div", { class: "charts", id: "training-charts" });
  const samples = el("div", { id: "training-samples" });
  const config = el("div");
  const status = el("span", { class: "muted" });
  append(container, [el("p", {}, el("a", { href: "#/training" }, "‹ all runs")),
    el("h2", {}, `Run ${name} `, status), charts, el("h3", {}, "Samples"), samples, el("h3", {}, "Config"), config]);

  async function loadDetail() {
    const detail = await api(`/api/training/runs/${encodeURIComponent(name)}`);
    clear(samples).append(detail.samples.length
      ? el("div", {}, [...detail.samples].reverse().slice(0, 30).map((s) =>
          el("div", { class: "card sample" }, el("div", { class: "muted" }, `step ${s.step}`), el("pre", {}, s.text))))
      : el("p", { class: "muted" }, "No samples yet (they are drawn at each eval)."));
    clear(config).append(el("details", {}, el("summary", {}, `config.json, checkpoints: ${detail.checkpoints.join(", ") || "none"}`),
      el("pre", {}, fmt.json(detail.config))));
  }

  function draw() {
    const train = records.filter((r) => r.loss !== undefined && r.event === undefined);
    const val = records.filter((r) => r.val_loss !== undefined);
    const losses = train.map((r) => r.loss);
    const smoothed = smooth(losses);
    const last = train[train.length - 1];
    status.textContent = last ? `· step ${last.step}, loss ${fmt.num(last.loss)}` : "· no steps yet";
    clear(charts).append(
      lineChart({ title: "loss", yLabel: "nats/token", series: [
        { name: "train", color: "#2f6fdb", opacity: 0.3, width: 1, points: train.map((r) => [r.step, r.loss]) },
        { name: "train (smoothed)", color: "#2f6fdb", points: train.map((r, i) => [r.step, smoothed[i]]) },
        { name: "val", color: "#e8710a", dots: true, points: val.map((r) => [r.step, r.val_loss]) }] }),
      lineChart({ title: "tokens per second", series: [{ name: "tok/s", color: "#137333", points: train.map((r) => [r.step, r.tokens_per_s]) }] }),
      lineChart({ title: "MFU", yLabel: "fraction of peak", series: [{ name: "mfu", color: "#8e44ad", points: train.map((r) => [r.step, r.mfu]) }] }));
    return val.length;
  }

  async function poll() {
    try {
      const page = await api(`/api/training/metrics/${encodeURIComponent(name)}?offset=${offset}${file ? `&file=${encodeURIComponent(file)}` : ""}`);
      if (page.reset) records.length = 0;
      offset = page.offset;
      file = page.file; // a resume replaces metrics.jsonl: the server resets when this identity changes
      if (page.records.length || page.reset || !charts.childElementCount) {
        records.push(...page.records);
        const vals = draw();
        if (vals !== valCount) { valCount = vals; await loadDetail(); } // a new eval logged new samples
      }
    } catch (err) {
      clear(charts).append(errorBox(err));
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  loadDetail().catch((err) => clear(samples).append(errorBox(err)));
  poll();
  return () => { stopped = true; clearTimeout(timer); };
}
