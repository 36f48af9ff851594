// The nullworker engine's dashboard: one EventSource on /ui/events, a
// model rebuilt from its `reset` snapshot and kept up to date by the
// events after it, and a view redrawn at most once per animation frame.
// Plain DOM and hand-drawn SVG; no library, no build step.
"use strict";

const WINDOW_SECONDS = 15 * 60; // chart span shown
const MAX_DECISIONS = 500;
const MAX_SAMPLES = 1800;
const TABLE_REFRESH_MS = 2000;
const LOG_REFRESH_MS = 1000;
const LOG_TAIL = 65536;

// Chart layers, bottom to top: name, colour variable, states summed.
const LAYERS = [
  ["busy", "--busy", null],
  ["idle", "--idle", null],
  ["loading", "--loading", ["CREATING", "LOADING", "MODEL_LOADING", "STARTING"]],
  ["stopping", "--stopping", ["STOPPING", "DESTROYING"]],
  ["error", "--error", ["ERROR"]],
  ["stopped", "--stopped", ["STOPPED"]],
];
const UP = new Set(["create", "start"]);

const model = { endpoints: new Map(), now: 0 };
const view = { route: null, selected: null, logKind: "worker", logTimer: null, tableTimer: null, dirty: true };
const perf = { firstRender: null, renders: 0, renderMs: 0, maxMs: 0, events: 0, bytes: 0 };
window.nullworkerDashboard = { model, perf };

function endpoint(name) {
  let ep = model.endpoints.get(name);
  if (!ep) {
    ep = { view: null, samples: [], decisions: [], sessions: new Map(), workers: new Map() };
    model.endpoints.set(name, ep);
  }
  return ep;
}

function lastSample(ep) {
  return ep.samples.length ? ep.samples[ep.samples.length - 1] : null;
}

// ---------------------------------------------------------------- stream
function applyReset(snap) {
  model.endpoints.clear();
  model.now = snap.at;
  for (const [name, e] of Object.entries(snap.endpoints)) {
    const ep = endpoint(name);
    ep.view = e.endpoint;
    ep.samples = e.samples;
    ep.decisions = e.decisions;
    for (const [id, s] of Object.entries(e.sessions)) ep.sessions.set(Number(id), s);
    for (const w of e.workers) ep.workers.set(w.id, w);
  }
}

function applyEvent(ev) {
  model.now = Math.max(model.now, ev.at);
  if (ev.type === "endpoint_deleted") { model.endpoints.delete(ev.endpoint); return; }
  if (ev.type === "endpoint") { endpoint(ev.endpoint.name).view = ev.endpoint; return; }
  const ep = endpoint(ev.endpoint);
  switch (ev.type) {
    case "sample":
      ep.samples.push(ev);
      if (ep.samples.length > MAX_SAMPLES) ep.samples.splice(0, ep.samples.length - MAX_SAMPLES);
      break;
    case "scale":
      ep.decisions.push(ev);
      if (ep.decisions.length > MAX_DECISIONS) ep.decisions.splice(0, ep.decisions.length - MAX_DECISIONS);
      break;
    case "worker_state": {
      const w = ep.workers.get(ev.worker) || { id: ev.worker, load: 0, url: "", control_port: null, created_at: ev.at, held: 0, held_since: null };
      w.state = ev.to;
      w.error = ev.reason;
      ep.workers.set(ev.worker, w);
      break;
    }
    case "worker_gone":
      ep.workers.delete(ev.worker);
      ep.sessions.delete(ev.worker);
      break;
    case "session": {
      const w = ep.workers.get(ev.worker);
      if (ev.held === 0) {
        ep.sessions.delete(ev.worker);
        if (w) { w.held = 0; w.held_since = null; }
      } else {
        const since = ep.sessions.has(ev.worker) ? ep.sessions.get(ev.worker).since : ev.at;
        ep.sessions.set(ev.worker, { held: ev.held, since });
        if (w) { w.held = ev.held; w.held_since = since; }
      }
      break;
    }
  }
}

const EVENT_TYPES = ["sample", "scale", "worker_state", "worker_gone", "session", "endpoint", "endpoint_deleted"];

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/ui/events");
  source.addEventListener("open", () => { conn.dataset.state = "live"; conn.textContent = "live"; });
  source.addEventListener("error", () => {
    conn.dataset.state = "lost";
    conn.textContent = source.readyState === EventSource.CLOSED ? "disconnected (reload to log in again)" : "reconnecting…";
  });
  source.addEventListener("reset", (m) => {
    perf.bytes += m.data.length;
    applyReset(JSON.parse(m.data));
    invalidate();
  });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (m) => {
      perf.events += 1;
      perf.bytes += m.data.length;
      applyEvent(JSON.parse(m.data));
      invalidate();
    });
  }
}

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtNum(x, digits = 1) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

function fmtAge(seconds) {
  if (!(seconds >= 0)) return "–";
  if (seconds < 60) return Math.floor(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function fmtTime(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function stateSummary(sample) {
  if (!sample) return [];
  const out = [];
  const idle = (sample.workers.IDLE || 0) - sample.busy;
  if (sample.busy) out.push(h("span", { class: "badge state-busy" }, sample.busy + " busy"));
  if (idle > 0) out.push(h("span", { class: "badge state-IDLE" }, idle + " idle"));
  for (const [state, n] of Object.entries(sample.workers)) {
    if (state !== "IDLE") out.push(h("span", { class: "badge state-" + state }, n + " " + state.toLowerCase()));
  }
  return out.length ? out : [h("span", { class: "muted" }, "none")];
}

function paramsSummary(v) {
  if (!v) return "";
  const p = v.params;
  const it = p.inactivity_timeout === null ? "unset" : p.inactivity_timeout + " s";
  return [
    v.seed ? h("span", { class: "badge seed", title: "the parameters of the seed preset" }, "seed") : null,
    h("span", { class: "muted" },
      `max_workers ${p.max_workers} · cold ${p.cold_workers} · target_util ${p.target_util} · ` +
      `queue ${p.target_queue_time}/${p.max_queue_time} s · inactivity ${it}`),
  ];
}

// ---------------------------------------------------------------- views
function overview() {
  const rows = [...model.endpoints.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, ep]) => {
    const s = lastSample(ep);
    return h("tr", { class: "clickable endpoint-row", dataset: { endpoint: name }, onclick: () => { location.hash = "#/endpoint/" + encodeURIComponent(name); } },
      h("td", null, h("a", { href: "#/endpoint/" + encodeURIComponent(name) }, name)),
      h("td", null, ep.view ? ep.view.state : "–"),
      h("td", null, paramsSummary(ep.view)),
      h("td", null, stateSummary(s)),
      h("td", { class: "num" }, s ? s.sessions : "–"),
      h("td", { class: "num" }, s ? s.waiting : "–"),
      h("td", { class: "num" }, s ? fmtNum(s.cost_last_minute, 0) : "–"));
  });
  return [
    h("h1", null, "Endpoints"),
    rows.length
      ? h("table", { id: "endpoints" },
          h("thead", null, h("tr", null, ["Endpoint", "State", "Parameters", "Workers", "Sessions held", "Requests waiting", "Cost, last minute (worker-s)"].map((t) => h("th", null, t)))),
          h("tbody", null, rows))
      : h("p", { class: "muted" }, "No endpoint yet: create one with nullworker endpoint create."),
  ];
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function layerValue(sample, name, states) {
  if (name === "busy") return sample.busy;
  if (name === "idle") return Math.max(0, (sample.workers.IDLE || 0) - sample.busy);
  let n = 0;
  for (const st of states) n += sample.workers[st] || 0;
  return n;
}

function chart(ep) {
  const W = 1000, H = 260, L = 40, R = 10, T = 10, B = 22;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "chart-svg" });
  // The last 15 minutes, or less while the history is shorter (at least
  // one minute), so a short run fills the chart.
  const end = model.now;
  const first = ep.samples.length ? ep.samples[0].at : end;
  const span = Math.max(60, Math.min(WINDOW_SECONDS, end - first));
  const start = end - span;
  const samples = ep.samples.filter((x) => x.at >= start);
  let ymax = 1;
  for (const x of samples) {
    let total = 0;
    for (const [name, , states] of LAYERS) total += layerValue(x, name, states);
    ymax = Math.max(ymax, total, x.want_active, x.sessions, x.dispatch ? x.dispatch.in_flight : 0);
  }
  ymax = Math.ceil(ymax * 1.1);
  const X = (t) => L + ((t - start) / span) * (W - L - R);
  const Y = (v) => H - B - (v / ymax) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = Math.round((ymax * i) / 4);
    svg.append(s("line", { x1: L, x2: W - R, y1: Y(v), y2: Y(v), class: "axis" }));
    const t = s("text", { x: L - 6, y: Y(v) + 4, "text-anchor": "end" }); t.textContent = v; svg.append(t);
  }
  const step = [10, 30, 60, 120, 300].find((x) => span / x <= 6) || 300;
  for (let back = 0; back <= span; back += step) {
    const t = s("text", { x: X(end - back), y: H - 6, "text-anchor": back === 0 ? "end" : "middle" });
    t.textContent = back === 0 ? "now" : back < 60 ? `-${back} s` : `-${back / 60} min`; svg.append(t);
  }
  if (samples.length) {
    const base = new Array(samples.length).fill(0);
    const style = getComputedStyle(document.documentElement);
    for (const [name, colour, states] of LAYERS) {
      const top = samples.map((x, i) => base[i] + layerValue(x, name, states));
      if (top.some((v, i) => v !== base[i])) {
        let d = "";
        samples.forEach((x, i) => { d += (i ? "L" : "M") + X(x.at).toFixed(1) + "," + Y(top[i]).toFixed(1); });
        for (let i = samples.length - 1; i >= 0; i--) d += "L" + X(samples[i].at).toFixed(1) + "," + Y(base[i]).toFixed(1);
        svg.append(s("path", { d: d + "Z", fill: style.getPropertyValue(colour).trim(), "fill-opacity": 0.75, class: "layer layer-" + name }));
      }
      samples.forEach((_, i) => { base[i] = top[i]; });
    }
    const line = (values, colour, dash, cls) => {
      let d = "";
      samples.forEach((x, i) => { d += (i ? "L" : "M") + X(x.at).toFixed(1) + "," + Y(values[i]).toFixed(1); });
      svg.append(s("path", { d, fill: "none", stroke: style.getPropertyValue(colour).trim(), "stroke-width": 2, "stroke-dasharray": dash, class: cls }));
    };
    line(samples.map((x) => x.want_active), "--demand", "6 3", "line-demand");
    line(samples.map((x) => x.sessions), "--sessions", "", "line-sessions");
    if (samples.some((x) => x.dispatch)) line(samples.map((x) => (x.dispatch ? x.dispatch.in_flight : 0)), "--loading", "2 3", "line-inflight");
  }
  const legend = h("div", { class: "legend" },
    LAYERS.map(([name, colour]) => h("span", null, h("i", { style: `background:var(${colour})` }), name)),
    h("span", null, h("i", { style: "background:var(--demand)" }), "demand (workers wanted, dashed)"),
    h("span", null, h("i", { style: "background:var(--sessions)" }), "sessions held"));
  return h("div", { class: "chart", id: "chart" }, svg, legend);
}

function decisionsView(ep) {
  const rows = ep.decisions.slice(-200).reverse().map((d) =>
    h("tr", { class: "decision " + (UP.has(d.action) ? "up" : "down"), dataset: { action: d.action } },
      h("td", null, fmtTime(d.at)),
      h("td", { class: "action" }, d.action + (d.worker === null ? "" : " #" + d.worker)),
      h("td", null, h("span", { class: "reason" }, d.reason), h("div", { class: "detail" }, d.detail)),
      h("td", { class: "num" }, d.want_active),
      h("td", { class: "num" }, fmtNum(d.demand))));
  return h("div", { class: "timeline" },
    rows.length
      ? h("table", { id: "decisions" }, h("thead", null, h("tr", null, ["Time", "Action", "Reason", "Wanted", "Demand"].map((t) => h("th", null, t)))), h("tbody", null, rows))
      : h("p", { class: "muted", style: "padding:.5rem" }, "No scale decision yet."));
}

function workersView(name, ep) {
  const all = [...ep.workers.values()].sort((a, b) => a.id - b.id);
  const shown = all.slice(0, 500);
  const rows = shown.map((w) => {
    const busy = w.state === "IDLE" && w.held > 0;
    return h("tr", { class: "clickable worker-row" + (view.selected === w.id ? " selected" : ""), dataset: { worker: w.id, state: busy ? "busy" : w.state }, onclick: () => openLog(name, w.id) },
      h("td", { class: "num" }, w.id),
      h("td", { class: "state-" + (busy ? "busy" : w.state) }, busy ? "BUSY" : w.state, w.error ? h("div", { class: "detail error" }, w.error) : null),
      h("td", { class: "num" }, fmtNum(w.load)),
      h("td", null, w.url || "–"),
      h("td", { class: "num" }, w.control_port || "–"),
      h("td", null, fmtAge(model.now - w.created_at)),
      h("td", { class: "num" }, w.held || 0),
      h("td", null, w.held_since ? fmtTime(w.held_since) : "–"));
  });
  return h("div", { class: "workers" },
    h("table", { id: "workers" },
      h("thead", null, h("tr", null, ["Id", "State", "Load", "URL", "Control port", "Age", "Sessions", "Held since"].map((t) => h("th", null, t)))),
      h("tbody", null, rows)),
    all.length > shown.length ? h("p", { class: "muted" }, `${all.length - shown.length} more workers not shown`) : null,
    all.length ? null : h("p", { class: "muted" }, "No worker."));
}

function endpointPage(name) {
  const ep = model.endpoints.get(name);
  if (!ep) return [h("h1", null, name), h("p", { class: "muted" }, "No such endpoint (yet).")];
  const x = lastSample(ep);
  const card = (id, label, value, extra) => h("div", { class: "card", id, ...extra }, h("div", { class: "v" }, value), h("div", { class: "k" }, label));
  const busy = x ? x.busy : 0;
  const cards = [
    card("busy", "busy workers", busy, { dataset: { value: busy } }),
    card("active", "workers (not stopped)", x ? Object.entries(x.workers).filter(([k]) => k !== "STOPPED").reduce((a, [, n]) => a + n, 0) : 0),
    card("wanted", "wanted by the scaler", x ? x.want_active : "–"),
    card("demand", "demand (perf units)", x ? fmtNum(x.demand) : "–"),
    card("sessions", "sessions held", x ? x.sessions : "–"),
    card("waiting", "requests waiting", x ? x.waiting : "–"),
    card("cost", "worker-seconds, last minute", x ? fmtNum(x.cost_last_minute, 0) : "–"),
  ];
  if (x && x.dispatch) {
    cards.push(card("backlog", "dispatch backlog", x.dispatch.backlog));
    cards.push(card("inflight", "dispatch in flight", x.dispatch.in_flight));
  }
  return [
    h("p", null, h("a", { href: "#/" }, "← all endpoints")),
    h("h1", null, name, " ", h("span", { class: "badge" }, ep.view ? ep.view.state : "")),
    h("p", null, paramsSummary(ep.view)),
    h("div", { class: "cards" }, cards),
    h("h2", null, "Workers by state, demand and sessions (1 s resolution, up to 15 min)"),
    chart(ep),
    h("div", { class: "grid2" },
      h("div", null, h("h2", null, "Scale decisions"), decisionsView(ep)),
      h("div", null, h("h2", null, "Workers"), workersView(name, ep))),
    logPanel(name),
  ];
}

// ---------------------------------------------------------------- logs
function logPanel(name) {
  if (view.selected === null) return h("p", { class: "muted" }, "Click a worker to follow its log.");
  const existing = document.getElementById("log-panel");
  if (existing && existing.dataset.worker === String(view.selected)) return existing;
  return h("div", { id: "log-panel", dataset: { worker: view.selected } },
    h("h2", null, `Log of worker ${view.selected} `,
      h("button", { onclick: () => { view.logKind = "worker"; refreshLog(name); } }, "worker"), " ",
      h("button", { onclick: () => { view.logKind = "consumer"; refreshLog(name); } }, "consumer"), " ",
      h("button", { onclick: () => closeLog() }, "close")),
    h("pre", { id: "log" }, "…"));
}

async function refreshLog(name) {
  if (view.selected === null) return;
  const url = `/ui/api/endpoints/${encodeURIComponent(name)}/workers/${view.selected}/log?tail=${LOG_TAIL}` + (view.logKind === "consumer" ? "&consumer=1" : "");
  const pre = document.getElementById("log");
  try {
    const r = await fetch(url, { credentials: "same-origin" });
    const text = r.ok ? await r.text() : `(${r.status}) ` + (await r.text());
    if (pre) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      // Worker logs are coloured for terminals; show them plain.
      pre.textContent = text.replace(/\x1b\[[0-9;]*m/g, "") || "(empty)";
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  } catch (e) {
    if (pre) pre.textContent = "cannot read the log: " + e;
  }
}

function openLog(name, id) {
  view.selected = id;
  clearInterval(view.logTimer);
  view.logTimer = setInterval(() => refreshLog(name), LOG_REFRESH_MS);
  invalidate();
  requestAnimationFrame(() => refreshLog(name));
}

function closeLog() {
  view.selected = null;
  clearInterval(view.logTimer);
  invalidate();
}

// ---------------------------------------------------------------- table refresh
async function refreshTable(name) {
  try {
    const r = await fetch(`/ui/api/endpoints/${encodeURIComponent(name)}/workers`, { credentials: "same-origin" });
    if (!r.ok) return;
    const body = await r.json();
    const ep = model.endpoints.get(name);
    if (!ep) return;
    ep.workers = new Map(body.workers.map((w) => [w.id, w]));
    invalidate();
  } catch (e) { /* the stream shows the connection state */ }
}

// ---------------------------------------------------------------- routing and render
function route() {
  const m = location.hash.match(/^#\/endpoint\/(.+)$/);
  return m ? { page: "endpoint", name: decodeURIComponent(m[1]) } : { page: "overview" };
}

function onRoute() {
  view.route = route();
  closeLog();
  clearInterval(view.tableTimer);
  if (view.route.page === "endpoint") {
    const name = view.route.name;
    view.tableTimer = setInterval(() => refreshTable(name), TABLE_REFRESH_MS);
  }
  invalidate();
}

let pending = false;
function invalidate() {
  view.dirty = true;
  if (pending) return;
  pending = true;
  requestAnimationFrame(render);
}

function render() {
  pending = false;
  if (!view.dirty) return;
  view.dirty = false;
  const t0 = performance.now();
  const app = document.getElementById("app");
  const logScroll = document.getElementById("log");
  const scroll = logScroll ? logScroll.scrollTop : 0;
  const content = view.route.page === "endpoint" ? endpointPage(view.route.name) : overview();
  app.replaceChildren(...content.filter(Boolean));
  const pre = document.getElementById("log");
  if (pre) pre.scrollTop = scroll;
  const took = performance.now() - t0;
  perf.renders += 1;
  perf.renderMs += took;
  perf.maxMs = Math.max(perf.maxMs, took);
  if (perf.firstRender === null && model.endpoints.size) perf.firstRender = performance.now();
  document.body.dataset.renders = perf.renders;
}

window.addEventListener("hashchange", onRoute);
onRoute();
connect();
