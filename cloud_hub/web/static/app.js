// The edgefleet dashboard: polls the hub's JSON API and redraws; no build step, no libraries.
"use strict";

const POLL_MS = 1000;
const state = { device: null, driftPick: null, token: null, fleet: null, deviceRow: null };
// the fleet table's page: filters, order and slice (GET /api/fleet's query)
const view = { severity: "", model: "", sort: "severity", offset: 0, limit: 50 };

// ---- token: from the URL fragment (#token=...) once, then this tab's session storage ---------
(function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("edgehub-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.token = sessionStorage.getItem("edgehub-token");
})();

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("edgehub-token", state.token);
  poll();
});

async function api(path, method = "GET") {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const res = await fetch(path, { method, headers });
  const body = await res.json().catch(() => ({ error: res.statusText }));
  if (res.status === 401 || res.status === 403) document.getElementById("token-form").hidden = false;
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${body.error || ""}`);
  return body;
}

// ---- tiny DOM helpers (textContent only: device data is never parsed as HTML) -----------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}
const slug = (s) => String(s).replace(/[^a-z0-9]+/gi, "-");
const badge = (s) => el("span", { class: "badge state-" + slug(s) }, s);
const fmt = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

function ago(epoch, now) {
  if (!epoch) return "never";
  const s = Math.max(0, now - epoch);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : new Date(epoch * 1000).toISOString();
}

// ---- fleet ----------------------------------------------------------------------------------
// what the hub refused of a device: "rate 120" (messages past its rate), "quota 3" (records)
function refusedText(refused) {
  const parts = Object.entries(refused ?? {}).filter(([, n]) => n > 0).sort();
  return parts.length ? parts.map(([reason, n]) => `${reason} ${n}`).join(", ") : "–";
}

// "ok" green, "-" (no inputs) plain, anything else ("no input 75s", "port lost x3") amber
const inputBadge = (text) => (text === "-" ? text : el("span", { class: "badge " + (text === "ok" ? "state-ok" : "state-warn") }, text));

function fleetQuery() {
  const q = new URLSearchParams({ limit: view.limit, offset: view.offset, sort: view.sort });
  if (view.severity) q.append("severity", view.severity);
  if (view.model) q.append("model", view.model);
  return "/api/fleet?" + q;
}

// the drift heat map shows the devices of the fleet table's page ("" matches none)
function driftQuery(fleet) {
  const ids = fleet.devices.length ? fleet.devices.map((d) => d.id) : [""];
  return "/api/drift?" + new URLSearchParams(ids.map((id) => ["device", id]));
}

function setView(changes) {
  Object.assign(view, { offset: 0 }, changes);
  poll();
}

document.querySelectorAll("#severity-filter button").forEach((b) => b.addEventListener("click", () => setView({ severity: b.dataset.severity })));
document.getElementById("model-filter").addEventListener("change", (ev) => setView({ model: ev.target.value }));
document.getElementById("sort").addEventListener("change", (ev) => setView({ sort: ev.target.value }));
document.getElementById("page-prev").addEventListener("click", () => {
  view.offset = Math.max(0, view.offset - view.limit);
  poll();
});
document.getElementById("page-next").addEventListener("click", () => {
  if (state.fleet && view.offset + view.limit < state.fleet.total) view.offset += view.limit;
  poll();
});

function renderPager(fleet) {
  const all = Object.values(fleet.counts).reduce((a, b) => a + b, 0);
  document.querySelectorAll("#severity-filter button").forEach((b) => {
    b.classList.toggle("on", b.dataset.severity === view.severity);
    b.querySelector(".n").textContent = b.dataset.severity ? fleet.counts[b.dataset.severity] : all;
  });
  const last = Math.min(fleet.offset + fleet.limit, fleet.total);
  document.getElementById("page-info").textContent = fleet.total ? `${fleet.offset + 1}–${last} of ${fleet.total}` : "no devices match";
  document.getElementById("page-prev").disabled = fleet.offset === 0;
  document.getElementById("page-next").disabled = last >= fleet.total;
  document.getElementById("sort").value = view.sort;
}

function renderFleet(fleet) {
  state.fleet = fleet;
  renderPager(fleet);
  const body = document.querySelector("#fleet tbody");
  document.getElementById("fleet-summary").textContent = `${fleet.fleet} devices`;
  body.replaceChildren(
    ...fleet.devices.map((d) =>
      el(
        "tr",
        { "data-device": d.id, class: d.id === state.device ? "selected" : null, onclick: () => pickDevice(d.id) },
        el("td", { class: "id" }, d.id),
        el("td", { class: "severity", title: d.concerns.join(", ") }, badge(d.severity), d.concerns.length ? " " + d.concerns[0] : ""),
        el("td", { class: "status" }, badge(d.status)),
        el("td", { class: "model" }, d.model ?? "none"),
        el("td", { class: "version" }, d.version ?? "–"),
        el("td", { class: "profile" }, d.profile),
        el("td", { class: "last-seen" }, ago(d.last_seen, fleet.now)),
        el("td", { class: "inferences" }, d.inferences),
        el("td", { class: "p95" }, fmt(d.latency_p95_ms, 3)),
        el("td", { class: "dropped" }, d.dropped),
        el("td", { class: "refused" }, refusedText(d.refused)),
        el("td", { class: "storage" }, storageCell(d.storage)),

        el("td", { class: "input" }, inputBadge(d.input)),
        el("td", { class: "drift" }, d.drift_status ? badge(d.drift_status) : "–", " ", d.drift_max_psi === null ? "" : fmt(d.drift_max_psi)),
      ),
    ),
  );
  const pick = document.getElementById("device-pick");
  if (!state.device && fleet.devices.length) state.device = fleet.devices[0].id;
  // this page's devices, and the one shown if it is on another page
  const ids = fleet.devices.map((d) => d.id);
  if (state.device && !ids.includes(state.device)) ids.unshift(state.device);
  if (pick.options.length !== ids.length || ids.some((id, i) => pick.options[i].value !== id)) {
    pick.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  }
  pick.value = state.device ?? "";
}

// ---- per model version: devices, rows/s, errors, latency, drift ----------------------------
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)}%`);

function renderVersions(data) {
  const filter = document.getElementById("model-filter");
  const labels = data.versions.map((v) => v.label);
  const models = [...new Set(data.versions.map((v) => v.model))];
  const options = [["", "every version"], ...models.map((m) => [m, `${m} (every version)`]), ...labels.map((l) => [l, l])];
  if (view.model && !options.some(([v]) => v === view.model)) options.push([view.model, view.model]);
  if (filter.options.length !== options.length || options.some(([v], i) => filter.options[i].value !== v)) {
    filter.replaceChildren(...options.map(([v, text]) => el("option", { value: v }, text)));
  }
  filter.value = view.model;
  const box = document.getElementById("versions");
  if (!data.versions.length) return box.replaceChildren(el("p", { class: "muted" }, "no device runs a model yet"));
  const head = ["version", "devices", "online", "rows/s", "errors/s", "error rate", "p50 ms", "p95 ms", "drift warn", "drift alert"];
  const rows = data.versions.map((v) =>
    el(
      "tr",
      { "data-version": v.label, class: v.label === view.model ? "selected" : null, onclick: () => setView({ model: v.label === view.model ? "" : v.label }) },
      el("td", { class: "label" }, v.label),
      el("td", { class: "devices" }, v.devices),
      el("td", { class: "online" }, v.online),
      el("td", { class: "rows-per-s" }, fmt(v.rows_per_s, 1)),
      el("td", { class: "errors-per-s" }, fmt(v.errors_per_s, 2)),
      el("td", { class: "error-rate" }, pct(v.error_rate)),
      el("td", { class: "p50" }, fmt(v.latency_ms.p50, 3)),
      el("td", { class: "p95" }, fmt(v.latency_ms.p95, 3)),
      el("td", { class: "drift-warn" }, v.drift_warn ? badge(String(v.drift_warn)) : "0"),
      el("td", { class: "drift-alert" }, v.drift_alert ? el("span", { class: "badge state-alert" }, String(v.drift_alert)) : "0"),
    ),
  );
  box.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)));
}

// ---- the fleet over time, next to the device's own charts -----------------------------------
const FLEET_SERIES_EVERY = 5; // polls between two reads: each sums 15 minutes of the fleet's records

function renderFleetCharts(data) {
  const of = (key) => data.series.map((s) => ({ name: s.model, points: s.points.map((p) => [p.ts, p[key]]) }));
  document.getElementById("fleet-charts").replaceChildren(
    lineChart("fleet rows", "per s", of("rows_per_s")),
    lineChart("fleet error rate", "errors per row", of("error_rate")),
    lineChart("fleet drift alerts", `reports per ${data.bucket_s} s`, of("alerts")),
  );
}

document.getElementById("device-pick").addEventListener("change", (ev) => pickDevice(ev.target.value));

function pickDevice(id) {
  state.device = id;
  poll();
}

// ---- a device's own storage: a full or read-only disk, and the records it could not keep -----
const REASONS = { "disk-full": "disk full", "read-only": "read-only", permission: "permission denied", "io-error": "I/O error", corrupt: "corrupt database" };
const unkeptOf = (s) => Object.values(s.unkept).reduce((a, b) => a + b, 0);

function storageCell(s) {
  if (!s) return "–";
  const lost = unkeptOf(s);
  const what = s.ok ? "ok" : s.reasons.map((r) => REASONS[r] ?? r).join(", ") || "failing";
  return el("span", { title: s.error ?? "" }, el("span", { class: "badge state-" + (s.ok ? "ok" : "alert"), "data-storage": s.ok ? "ok" : "failing" }, what), lost ? ` ${lost} unkept` : "");
}

async function deviceRow() {
  // the device shown: from this page of the fleet, else asked for (it is on another page)
  const onPage = (state.fleet?.devices ?? []).find((d) => d.id === state.device);
  state.deviceRow = onPage ?? (state.device ? await api(`/api/devices/${encodeURIComponent(state.device)}`) : null);
}

function renderDeviceStorage(fleet) {
  const box = document.getElementById("device-storage");
  const s = (state.deviceRow ?? {}).storage;
  box.className = "storage" + (s && !s.ok ? " error" : " muted");
  box.dataset.storage = !s ? "unknown" : s.ok ? "ok" : "failing";
  if (!s) return (box.textContent = state.device ? "storage: not reported by this agent" : "");
  const lost = Object.entries(s.unkept).filter(([, n]) => n).map(([kind, n]) => `${n} ${kind}`);
  box.textContent =
    (s.ok ? "storage: ok" : `storage: ${s.error} (since ${ago(s.since, fleet.now)})`) +
    (lost.length ? ` · records it could not keep: ${lost.join(", ")}` : "");
}

// ---- rollouts -------------------------------------------------------------------------------
const ACTIONS = { running: ["pause", "abort", "rollback"], paused: ["resume", "abort", "rollback"], halted: ["rollback"], completed: ["rollback"] };

function renderRollouts(data) {
  const box = document.getElementById("rollouts");
  if (!data.rollouts.length) return box.replaceChildren(el("p", { class: "muted" }, "no rollouts yet"));
  box.replaceChildren(...data.rollouts.map(renderRollout));
}

function renderRollout(r) {
  const total = Object.values(r.progress).reduce((a, b) => a + b, 0);
  const healthy = r.progress.healthy ?? 0;
  const pct = total ? Math.round((100 * healthy) / total) : 0;
  const buttons = (ACTIONS[r.state] ?? []).map((a) => el("button", { "data-action": a, onclick: () => act(r.id, a) }, a));
  return el(
    "div",
    { class: "rollout", "data-rollout": r.id, "data-state": r.state },
    el(
      "div",
      { class: "head" },
      el("strong", {}, r.id),
      el("span", { class: "model" }, r.model ?? ""),
      el("span", { class: "state" }, badge(r.state)),
      el("span", { class: "wave-of" }, r.wave ? `wave ${r.wave} of ${r.waves.length}` : ""),
      el("span", { class: "bar", title: `${healthy} of ${total} healthy` }, el("span", { style: `width:${pct}%` })),
      el("span", { class: "progress" }, `${healthy}/${total} healthy`),
      ...buttons,
    ),
    ...r.waves.map((w) =>
      el(
        "div",
        { class: "wave", "data-wave": w.number },
        el("span", { class: "muted" }, `wave ${w.number} `),
        badge(w.state),
        " ",
        ...w.devices.map((d) => el("span", { class: "badge state-" + slug(d.state), "data-device": d.id, title: d.reason || d.state }, `${d.id}: ${d.state}`)),
      ),
    ),
    r.halt_reason ? el("div", { class: "halt-reason" }, r.halt_reason) : "",
    r.soak ? el("div", { class: "soak", "data-seconds-left": r.soak.seconds_left }, `wave ${r.soak.wave} soaking: ${r.soak.seconds_left} s left of ${fmt(r.soak.soak_s, 0)} s`) : "",
    gateTable(r.checks),
  );
}

// each wave's gate as a table: what it checks, the value, the limit, pass or fail
const COUNT_CHECKS = ["failures", "healthy"]; // devices; the others are measures
const checkNumber = (name, v) => (v === null ? "–" : name === "error_rate" ? pct(v) : COUNT_CHECKS.includes(name) ? String(v) : fmt(v, 3));
const checkValue = (c) => (c.value === null ? "no data yet" : checkNumber(c.name, c.value));
const checkLimit = (c) => `${c.relation} ${checkNumber(c.name, c.limit)}`;
const verdict = (c) => (c.passed === null ? badge("waiting") : el("span", { class: "badge state-" + (c.passed ? "ok" : "alert") }, c.passed ? "pass" : "fail"));

function gateTable(checks) {
  if (!checks.length) return "";
  const rows = checks.map((c) =>
    el(
      "tr",
      { "data-wave": c.wave, "data-check": c.name, "data-live": String(c.live), "data-passed": String(c.passed) },
      el("td", {}, `wave ${c.wave}${c.gate === "shadow gate" ? " (shadow)" : ""}`),
      el("td", { class: "check" }, c.label),
      el("td", { class: "value" }, checkValue(c)),
      el("td", { class: "limit" }, checkLimit(c)),
      el("td", { class: "verdict" }, verdict(c)),
      el("td", { class: "live muted" }, c.live ? "live" : "judged"),
    ),
  );
  const head = ["wave", "gate", "value", "limit", "", ""].map((h) => el("th", {}, h));
  return el("table", { class: "gates" }, el("thead", {}, el("tr", {}, ...head)), el("tbody", {}, ...rows));
}

async function act(id, action) {
  try {
    await api(`/api/rollouts/${encodeURIComponent(id)}/${action}`, "POST");
    poll();
  } catch (e) {
    showError(e);
  }
}

// ---- experiments: two models on cohorts, one decision once both hold the samples needed ------
function renderExperiments(data) {
  const box = document.getElementById("experiments");
  if (!data.experiments.length) return box.replaceChildren(el("p", { class: "muted" }, "no experiments yet"));
  box.replaceChildren(...data.experiments.map(renderExperiment));
}

const metricText = (v, metric) => (v === null || v === undefined ? "–" : metric === "p95" ? `${fmt(v, 3)} ms` : fmt(v, 4));

function renderExperiment(x) {
  const show = (v) => metricText(v, x.metric);
  const rows = x.cohorts.map((c) =>
    el(
      "tr",
      { "data-cohort": c.cohort },
      el("td", {}, c.cohort),
      el("td", { class: "model" }, c.model),
      el("td", { class: "devices", title: c.devices.join(", ") }, c.devices.length),
      el("td", { class: "samples" }, `${c.n} / ${x.needed}`),
      el("td", { class: "value" }, show(c.value)),
      el("td", { class: "interval" }, c.low === null ? "–" : `${show(c.low)} to ${show(c.high)}`),
    ),
  );
  const waiting = `deciding once both cohorts hold ${x.needed} samples, or at ${new Date(x.deadline * 1000).toLocaleString()}`;
  return el(
    "div",
    { class: "experiment", "data-experiment": x.id, "data-state": x.state },
    el(
      "div",
      { class: "head" },
      el("strong", {}, x.id),
      el("span", { class: "model" }, x.models),
      el("span", { class: "state" }, badge(x.state)),
      el("span", { class: "muted" }, `${x.metric} (${x.better} is better) on ${x.target}`),
    ),
    el("table", {}, el("thead", {}, el("tr", {}, ...["cohort", "model", "devices", "samples", x.metric, "interval"].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)),
    el("div", { class: "decision" }, x.decision || x.reason || waiting),
    x.test ? el("div", { class: "muted test" }, `${x.test}: difference ${show(x.difference)}, ${show(x.low)} to ${show(x.high)}`) : "",
    x.promoted ? el("div", { class: "muted" }, `promoted: rollout ${x.promoted}`) : "",
  );
}

// ---- model quality: labels joined to predictions, per model version, with 95% intervals -----
const QUALITY = ["accuracy", "precision", "recall", "f1", "rmse", "mae"];

function renderQuality(data) {
  const box = document.getElementById("quality");
  if (!data.rows.length) return box.replaceChildren(el("p", { class: "muted" }, "no labels joined to predictions yet"));
  const shown = QUALITY.filter((m) => data.rows.some((r) => r[m]));
  const cell = (m) => (m ? el("span", {}, fmt(m.value, 3), el("span", { class: "muted" }, m.low === null ? "" : ` (${fmt(m.low, 3)} to ${fmt(m.high, 3)})`)) : "–");
  const rows = data.rows.map((r) =>
    el(
      "tr",
      { "data-model": `${r.model}@${r.version}`, "data-alert": String(r.alert) },
      el("td", {}, `${r.model}@${r.version}`),
      el("td", { class: "labels" }, r.labels),
      ...shown.map((m) => el("td", { "data-metric": m }, cell(r[m]))),
      el("td", { class: "floor" }, r.floor === null ? "–" : fmt(r.floor, 2)),
      el("td", { class: "alert" }, r.alert ? badge("below floor") : ""),
    ),
  );
  const head = ["model", "labels", ...shown, "floor", ""].map((h) => el("th", {}, h));
  box.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...head)), el("tbody", {}, ...rows)));
}

// ---- charts (SVG) ---------------------------------------------------------------------------
const COLORS = ["#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00", "#00897b"];

function lineChart(title, unit, series) {
  const W = 420, H = 180, L = 48, R = 10, T = 34, B = 24;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  svg.setAttribute("class", "chart");
  svg.setAttribute("data-chart", title);
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  add("text", { x: L, y: 14, style: "font-weight:600" }, `${title} (${unit})`);
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null));
  if (!pts.length) {
    add("text", { x: L, y: H / 2 }, "no data yet");
    return svg;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(0, ...ys), y1 = Math.max(...ys, y0 + 1e-9) * 1.1;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#b0bec5" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#b0bec5" });
  add("text", { x: 2, y: sy(y1) + 10 }, fmt(y1, y1 < 10 ? 3 : 0));
  add("text", { x: 2, y: H - B }, fmt(y0, 0));
  add("text", { x: L, y: H - 6 }, new Date(x0 * 1000).toLocaleTimeString());
  add("text", { x: W - R - 60, y: H - 6 }, new Date(x1 * 1000).toLocaleTimeString());
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const shown = s.points.filter((p) => p[1] !== null).map((p) => [sx(p[0]).toFixed(1), sy(p[1]).toFixed(1)]);
    add("polyline", { points: shown.map((p) => p.join(",")).join(" "), fill: "none", stroke: color, "stroke-width": 1.5, "data-series": s.name });
    if (shown.length < 30) shown.forEach(([x, y]) => add("circle", { cx: x, cy: y, r: 2, fill: color }));
    add("text", { x: L + i * 80, y: 28, style: `fill:${color}` }, s.name); // the legend, under the title
  });
  return svg;
}

async function renderDevice() {
  const box = document.getElementById("charts");
  if (!state.device) return box.replaceChildren(el("p", { class: "muted" }, "no devices yet"));
  const t = await api(`/api/devices/${encodeURIComponent(state.device)}/telemetry?limit=300`);
  const at = (f) => t.points.map((p) => [p.ts, f(p)]);
  const d = state.deviceRow;
  box.replaceChildren(
    d ? renderInputs(d) : "",
    lineChart("latency", "ms", ["p50", "p95", "p99"].map((q) => ({ name: q, points: at((p) => p.latency_ms[q]) }))),
    lineChart("throughput", "inferences/s", [{ name: "rate", points: at((p) => p.throughput_per_s) }]),
    lineChart("errors", "per window", [{ name: "errors", points: at((p) => p.errors) }]),
  );
}

function renderInputs(d) {
  const rows = d.inputs.map((i) =>
    el(
      "tr",
      { "data-input": i.name },
      el("td", {}, i.name),
      el("td", { class: "open" }, i.open ? "open" : "closed"),
      el("td", { class: "idle" }, d.online ? `${fmt(i.idle_s, 0)} s` : "–"),
      el("td", { class: "lost" }, i.lost),
      el("td", { class: "reopened" }, i.reopened),
      el("td", { class: "no-input" }, d.online && i.no_input ? badge("no input") : ""),
    ),
  );
  return el(
    "div",
    { id: "inputs", class: "inputs" },
    el("div", {}, el("strong", {}, "inputs "), inputBadge(d.input)),
    rows.length
      ? el("table", {}, el("thead", {}, el("tr", {}, ...["input", "state", "idle", "lost", "reopened", ""].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows))
      : "",
  );
}

// ---- drift ----------------------------------------------------------------------------------
function renderDrift(d) {
  document.getElementById("thresholds").textContent = `colour: adjusted p below ${d.thresholds.warn} warns, below ${d.thresholds.alert} alerts; number: PSI`;
  document.querySelector("#drift thead").replaceChildren(
    el("tr", {}, el("th", {}, "device"), el("th", {}, "model"), ...d.features.map((f) => el("th", { class: "feature", title: f }, f))),
  );
  document.querySelector("#drift tbody").replaceChildren(
    ...d.rows.map((row) =>
      el(
        "tr",
        { "data-device": row.device },
        el("td", {}, row.device),
        el("td", {}, row.model ?? ""),
        ...d.features.map((f) => {
          const lvl = row.levels[f];
          const pick = () => {
            state.driftPick = { device: row.device, feature: f };
            renderDriftChart();
          };
          return lvl === undefined
            ? el("td", {}, "")
            : el("td", { class: `cell level-${lvl}`, "data-feature": f, "data-level": lvl, title: `${row.device} ${f}: PSI ${row.psi[f]}`, onclick: pick }, fmt(row.psi[f]));
        }),
      ),
    ),
  );
}

async function renderDriftChart() {
  const pick = state.driftPick;
  if (!pick) return;
  const q = `feature=${encodeURIComponent(pick.feature)}&limit=500`;
  const s = await api(`/api/devices/${encodeURIComponent(pick.device)}/drift?${q}`);
  const points = (s.features[pick.feature] ?? []).map((p) => [p.ts, p.psi]);
  document.getElementById("drift-chart").replaceChildren(lineChart(`PSI of ${pick.feature} on ${pick.device}`, "PSI", [{ name: pick.feature, points }]));
}

// ---- fleet drift: every device's windows merged per cohort (the fleet on top) ---------------
const FLEET_DRIFT_EVERY = 10; // polls between two reads: each merges an hour of reports

function renderFleetDrift(d) {
  const box = document.getElementById("fleet-drift");
  if (!d.models.length) return box.replaceChildren(el("p", { class: "muted" }, "no drift reports in the last hour"));
  box.replaceChildren(...d.models.map(fleetMap));
}

const skippedText = (skipped) => Object.entries(skipped).map(([why, n]) => `${n} windows skipped (${why})`).join(", ");

function fleetMap(m) {
  const head = el("tr", {}, ...["cohort", "status", "-log10 p", "devices", "rows"].map((h) => el("th", {}, h)), ...m.features.map((f) => el("th", { class: "feature", title: f }, f)));
  const rows = m.rows.map((r) =>
    el(
      "tr",
      { "data-cohort": r.cohort },
      el("td", { class: "cohort" }, r.cohort),
      el("td", { class: "status" }, badge(r.status)),
      el("td", { class: "score", title: `p ${r.p ?? "–"}` }, fmt(r.score, 1)),
      el("td", { class: "devices" }, r.devices),
      el("td", { class: "rows", title: `reference: ${r.reference_rows} rows` }, r.rows),
      ...m.features.map((f) => {
        const c = r.cells[f];
        if (!c) return el("td", {}, "");
        const title = `${r.cohort} ${f}: p ${c.p}, adjusted ${c.q}, PSI ${c.psi}`;
        return el("td", { class: `cell level-${c.level}`, "data-feature": f, "data-level": c.level, title }, fmt(c.score, 1));
      }),
    ),
  );
  const fleet = m.rows.find((r) => r.cohort === "fleet") ?? {};
  const notes = [fleet.note, skippedText(fleet.skipped ?? {})].filter(Boolean).join("; ");
  return el(
    "div",
    { class: "fleet-map", "data-model": m.model },
    el("h3", {}, m.model),
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows))),
    notes ? el("p", { class: "muted notes" }, notes) : "",
  );
}

// ---- the loop -------------------------------------------------------------------------------
function showError(e) {
  const box = document.getElementById("error");
  box.textContent = e ? String(e.message ?? e) : "";
  box.hidden = !e;
}

let busy = false;
let polls = 0;
async function poll() {
  if (busy) return;
  busy = true;
  try {
    let fleet = await api(fleetQuery());
    if (fleet.total && fleet.offset >= fleet.total) {
      view.offset = Math.floor((fleet.total - 1) / view.limit) * view.limit; // the page emptied: the last one
      fleet = await api(fleetQuery());
    }
    const [versions, rollouts, experiments, drift, quality] = await Promise.all([api("/api/versions"), api("/api/rollouts"), api("/api/experiments"), api(driftQuery(fleet)), api("/api/metrics")]);
    renderFleet(fleet);
    renderVersions(versions);
    await deviceRow();
    renderDeviceStorage(fleet);
    renderRollouts(rollouts);
    renderExperiments(experiments);
    renderQuality(quality);
    renderDrift(drift);
    if (polls % FLEET_SERIES_EVERY === 0) renderFleetCharts(await api("/api/fleet/series?since_s=900&bucket_s=30"));
    if (polls++ % FLEET_DRIFT_EVERY === 0) renderFleetDrift(await api("/api/drift/fleet?since_s=3600"));
    await renderDevice();
    await renderDriftChart();
    document.getElementById("token-form").hidden = true;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    showError(null);
  } catch (e) {
    showError(e);
  } finally {
    busy = false;
  }
}

poll();
setInterval(poll, POLL_MS);
