// tidings dashboard: pages by the URL's hash (#/, #/queues/VHOST/NAME, #/exchanges,
// #/connections, #/node), each refreshed every second from the management API. Charts start
// from the history the server keeps (/api/history...), so a reload shows the last minutes.
// No build step, no dependencies: plain DOM and <canvas>.
"use strict";

const WINDOW_S = 900;  // what a chart shows: the server keeps 15 minutes
const series = { ready: [], unacked: [], published: [], delivered: [], acked: [] };
const sparks = {};
let queueSeries = null;  // the open queue page's history

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function ms(v) { return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0); }

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${fmt(n, i ? 1 : 0)} ${units[i]}`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${seconds.toFixed(0)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(0)} h`;
  return `${(seconds / 86400).toFixed(0)} d`;
}

// API URLs are built on location.origin: a page opened as http://user:pass@host/ has the
// credentials in its own URL, and fetch() refuses URLs that carry credentials.
function api(path, options = {}) {
  return fetch(new URL(path, location.origin), { credentials: "same-origin", ...options });
}
const json = (path) => api(path).then(r => (r.ok ? r.json() : Promise.reject(r.status)));
const JSON_POST = { method: "POST", headers: { "Content-Type": "application/json" } };
const enc = encodeURIComponent;

function queuePath(q, rest = "") { return `/api/queues/${enc(q.vhost)}/${enc(q.name)}${rest}`; }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function rowOf(cells) {
  const tr = el("tr");
  cells.forEach(c => tr.appendChild(c instanceof Node ? c : el("td", c)));
  return tr;
}

function td(child, cls) { const t = el("td", undefined, cls); t.appendChild(child); return t; }

function button(text, onclick, cls) {
  const b = el("button", text, cls);
  b.onclick = onclick;
  return b;
}

function trim(list, now) { while (list.length && list[0][0] < now - WINDOW_S) list.shift(); }

// A line chart over the last WINDOW_S seconds: `lines` are {points: [[t, v]], color, name};
// a y axis from 0 to the largest value in `unit`, and a legend.
function draw(canvas, lines, unit = "", window = WINDOW_S) {
  const width = canvas.clientWidth || 320;
  if (canvas.width !== width) canvas.width = width;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const small = !unit;  // sparklines: no axes
  const left = small ? 0 : 48, bottom = small ? 0 : 18, top = small ? 0 : 18;
  const now = Date.now() / 1000;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...lines.flatMap(l => l.points.map(p => p[1] || 0)));
  const plotW = w - left, plotH = h - bottom - top;
  ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH * i / 4;
    ctx.strokeStyle = "#eef0f5"; ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    if (!small) {
      ctx.fillStyle = "#6b7385"; ctx.textAlign = "right";
      ctx.fillText(fmt(max * (4 - i) / 4, max < 10 ? 2 : 0), left - 6, y + 4);
    }
  }
  lines.forEach(line => {
    ctx.strokeStyle = line.color; ctx.lineWidth = 2; ctx.beginPath();
    let started = false;
    line.points.forEach(([t, v]) => {
      if (v === null || v === undefined) { started = false; return; }
      const x = left + (1 - (now - t) / window) * plotW;
      const y = top + plotH - (v / max) * plotH;
      started ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
  });
  if (small) return;
  ctx.fillStyle = "#6b7385"; ctx.textAlign = "left";
  ctx.fillText(`−${window / 60} min`, left, h - 4);
  ctx.textAlign = "right"; ctx.fillText("now", w, h - 4);
  ctx.textAlign = "left"; ctx.fillText(unit, 0, 11);
  let x = Math.max(left, ctx.measureText(unit).width) + 16;
  lines.forEach(line => {
    ctx.fillStyle = line.color; ctx.fillRect(x, 4, 10, 10);
    ctx.fillStyle = "#333"; ctx.fillText(line.name, x + 14, 13);
    x += 24 + ctx.measureText(line.name).width;
  });
}

function sparkline(q) {
  const key = `${q.vhost}\u001f${q.name}`;
  const list = (sparks[key] = sparks[key] || []);
  const now = Date.now() / 1000;
  list.push([now, q.ready]); trim(list, now - WINDOW_S + 120);
  const c = document.createElement("canvas"); c.width = 120; c.height = 28;
  c.style.width = "120px";
  draw(c, [{ points: list, color: "#3b6fe0" }], "", 120);
  return c;
}

// -- the overview ---------------------------------------------------------------------------

async function replay(q, b) {
  b.disabled = true;
  await api(queuePath(q, "/dead-letters/replay"), { ...JSON_POST, body: "{}" });
  refresh();
}

// Queue actions. "get" shows the next message and puts it straight back (nack, requeue).
async function act(q, action) {
  const shown = document.getElementById("peek");
  if (action === "purge" && confirm(`Purge every ready message of '${q.name}'?`)) {
    await api(queuePath(q, "/contents"), { method: "DELETE" });
  } else if (action === "delete" && confirm(`Delete queue '${q.name}' and its messages?`)) {
    await api(queuePath(q), { method: "DELETE" });
    if (location.hash.startsWith("#/queues/")) location.hash = "#/";
  } else if (action === "get") {
    const got = await api(queuePath(q, "/receive"),
                          { ...JSON_POST, body: JSON.stringify({ max: 1, visibility_ms: 5000 }) })
      .then(r => r.json());
    const m = (got.messages || [])[0];
    if (m) {
      await api(`/api/receipts/${enc(m.receipt)}/nack`,
                { ...JSON_POST, body: JSON.stringify({ requeue: true }) });
      shown.textContent = `${q.name}: ${m.body ?? JSON.stringify(m.json) ?? m.body_base64}`;
    } else {
      shown.textContent = `${q.name}: no ready message`;
    }
  }
  refresh();
}

function queueRow(q, deadCount) {
  const link = el("a", q.name);
  link.href = `#/queues/${enc(q.vhost)}/${enc(q.name)}`;
  const tr = rowOf([
    td(link), el("td", fmt(q.ready), "ready"), fmt(q.unacked), fmt(q.delayed), fmt(q.consumers),
    q.oldest_ready_age_s === null ? "–" : `${q.oldest_ready_age_s.toFixed(1)} s`,
    fmt(q.rates.published, 1), fmt(q.rates.delivered, 1), fmt(q.rates.acked, 1),
    `${ms(q.waiting_time.p50_ms)} / ${ms(q.waiting_time.p99_ms)} ms`,
    `${ms(q.processing_time.p50_ms)} / ${ms(q.processing_time.p99_ms)} ms`,
    td(sparkline(q)),
  ]);
  tr.dataset.queue = q.name;
  const dead = el("td");
  if (deadCount !== undefined) {
    const b = button(`replay ${deadCount}`, () => replay(q, b));
    b.disabled = deadCount === 0;
    dead.appendChild(b);
  }
  tr.appendChild(dead);
  const actions = el("td");
  for (const action of ["get", "purge", "delete"]) {
    actions.appendChild(button(action, () => act(q, action), `action-${action}`));
  }
  tr.appendChild(actions);
  return tr;
}

function streamRow(s) {
  const now = Date.now() / 1000;
  const kept = [s.max_bytes === null ? null : bytes(s.max_bytes),
                s.max_age_s === null ? null : age(s.max_age_s)].filter(Boolean);
  const tr = rowOf([
    s.name, el("td", fmt(s.records), "records"), bytes(s.bytes),
    s.first_offset === null ? "–" : `${fmt(s.first_offset)} … ${fmt(s.last_offset)}`,
    s.last_timestamp === null ? "–" : `${age(Math.max(0, now - s.last_timestamp))} ago`,
    kept.length ? kept.join(", ") : "none",
    el("td", s.readers.map(r => `${r.name}: ${fmt(r.lag)} (${age(r.lag_s)})`).join(" · ") || "–",
       "readers"),
  ]);
  tr.dataset.stream = s.name;
  return tr;
}

async function seedOverview() {
  try {
    const history = await json("/api/history");
    for (const s of history.samples) {
      for (const key of Object.keys(series)) series[key].push([s.t, s[key]]);
    }
  } catch (e) { /* a user of one vhost: live numbers only */ }
}

async function overviewPage() {
  const [overview, queues, streams] = await Promise.all([
    json("/api/overview"), json("/api/queues"), json("/api/streams")]);
  document.querySelector("#streams tbody").replaceChildren(...streams.map(streamRow));
  // Queues only: a stream keeps what it delivered (its records are in the Streams table) and
  // dead letters wait for a person (their own card), so neither counts as work ready.
  const dead = {};
  queues.filter(q => q.name.endsWith(".dead")).forEach(q => { dead[q.name.slice(0, -5)] = q.ready; });
  const isStream = new Set(streams.map(s => `${s.vhost}\u001f${s.name}`));
  const shown = queues.filter(q => !q.name.endsWith(".dead") && !q.name.startsWith("tidings.http.")
                                   && !isStream.has(`${q.vhost}\u001f${q.name}`));
  const readyTotal = shown.reduce((sum, q) => sum + q.ready, 0);
  const deadTotal = Object.values(dead).reduce((sum, n) => sum + n, 0);
  const set = (id, text) => { document.getElementById(id).textContent = text; };
  set("ready", fmt(readyTotal));
  set("dead-total", fmt(deadTotal));
  set("unacked", fmt(overview.unacked));
  set("delayed", fmt(overview.delayed));
  set("publish-rate", fmt(overview.rates.published, 1));
  set("deliver-rate", fmt(overview.rates.delivered, 1));
  set("connections", fmt(overview.connections));
  set("consumers", fmt(overview.consumers));
  const now = Date.now() / 1000;
  series.ready.push([now, readyTotal]);
  series.unacked.push([now, overview.unacked]);
  for (const key of ["published", "delivered", "acked"]) series[key].push([now, overview.rates[key]]);
  Object.values(series).forEach(list => trim(list, now));
  draw(document.getElementById("chart-ready"),
       [{ points: series.ready, color: "#3b6fe0", name: "ready" },
        { points: series.unacked, color: "#c2410c", name: "unacked" }], "messages");
  draw(document.getElementById("chart-rates"),
       [{ points: series.published, color: "#3b6fe0", name: "published" },
        { points: series.delivered, color: "#15803d", name: "delivered" },
        { points: series.acked, color: "#7c3aed", name: "acked" }], "messages / s");
  document.querySelector("#queues tbody").replaceChildren(...shown.map(q => queueRow(q, dead[q.name])));
  await alarms();
}

async function alarms() {
  const banner = document.getElementById("alarm");
  try {
    const [node] = await json("/api/nodes");
    const raised = [node.mem_alarm && `memory: ${bytes(node.mem_used)} of ${bytes(node.mem_limit)}`,
                    node.disk_free_alarm && `disk: ${bytes(node.disk_free)} free`].filter(Boolean);
    banner.hidden = !raised.length;
    banner.textContent = raised.length ? `Alarm, publishers blocked: ${raised.join("; ")}` : "";
  } catch (e) { banner.hidden = true; }
}

// -- one queue ------------------------------------------------------------------------------

function openQueue() {
  const [, , vhost, name] = location.hash.split("/");
  return { vhost: decodeURIComponent(vhost || "%2F"), name: decodeURIComponent(name || "") };
}

async function seedQueue(q) {
  queueSeries = { key: `${q.vhost}\u001f${q.name}`, samples: [] };
  try {
    queueSeries.samples = (await json(queuePath({ vhost: q.vhost, name: q.name }).replace(
      "/api/queues/", "/api/history/queues/"))).samples;
  } catch (e) { /* no history yet */ }
}

function card(label, value, warn = false) {
  const c = el("div", undefined, warn ? "card warn" : "card");
  c.appendChild(el("div", label, "label"));
  c.appendChild(el("div", value, "value"));
  return c;
}

function facts(target, pairs) {
  target.replaceChildren(...pairs.map(([k, v]) => {
    const span = el("span", `${k} `);
    span.appendChild(el("b", v));
    return span;
  }));
}

async function queuePage() {
  const q = openQueue();
  if (!queueSeries || queueSeries.key !== `${q.vhost}\u001f${q.name}`) await seedQueue(q);
  const [info, consumers, messages, deadList] = await Promise.all([
    json(queuePath(q)), json(`/api/consumers/${enc(q.vhost)}`),
    json(queuePath(q, "/messages?limit=10")),
    json(queuePath(q, "/dead-letters?limit=20")).catch(() => [])]);
  document.getElementById("queue-title").textContent = `${q.name}`;
  facts(document.getElementById("queue-facts"), [
    ["vhost", q.vhost], ["type", info.type], ["durable", info.durable ? "yes" : "no"],
    ["policy", info.policy || "none"],
    ["arguments", JSON.stringify(info.arguments)],
    ["in effect", JSON.stringify(info.effective_policy_definition || {})]]);
  document.getElementById("queue-cards").replaceChildren(
    card("ready", fmt(info.ready)), card("unacked", fmt(info.unacked)),
    card("consumers", fmt(info.consumers)), card("publish /s", fmt(info.rates.published, 1)),
    card("deliver /s", fmt(info.rates.delivered, 1)), card("ack /s", fmt(info.rates.acked, 1)),
    card("waiting p50 / p99", `${ms(info.waiting_time.p50_ms)} / ${ms(info.waiting_time.p99_ms)} ms`),
    card("processing p50 / p99",
         `${ms(info.processing_time.p50_ms)} / ${ms(info.processing_time.p99_ms)} ms`),
    card("dead letters", fmt(deadList.length), deadList.length > 0));
  const now = Date.now() / 1000;
  const samples = queueSeries.samples;
  samples.push({ t: now, ready: info.ready, unacked: info.unacked, ...info.rates });
  while (samples.length && samples[0].t < now - WINDOW_S) samples.shift();
  const line = (key, color, name) => ({ points: samples.map(s => [s.t, s[key]]), color, name });
  draw(document.getElementById("queue-depth"),
       [line("ready", "#3b6fe0", "ready"), line("unacked", "#c2410c", "unacked")], "messages");
  draw(document.getElementById("queue-rates"),
       [line("published", "#3b6fe0", "published"), line("delivered", "#15803d", "delivered"),
        line("acked", "#7c3aed", "acked")], "messages / s");
  draw(document.getElementById("queue-latency"),
       [line("waiting_p99_ms", "#3b6fe0", "waiting"),
        line("processing_p99_ms", "#15803d", "processing")], "ms");
  document.querySelector("#queue-consumers tbody").replaceChildren(
    ...consumers.filter(c => c.queue.name === q.name).map(c => rowOf([
      c.consumer_tag, c.channel_details.name, c.ack_required ? "manual" : "auto",
      fmt(c.prefetch_count), c.exclusive ? "yes" : "no"])));
  document.querySelector("#queue-messages tbody").replaceChildren(...messages.map((m, i) => {
    const props = { ...m.properties };
    delete props.headers;
    return rowOf([String(i + 1), m.routing_key, el("td", JSON.stringify(props), "text"),
                  el("td", JSON.stringify(m.properties.headers || {}), "text"),
                  el("td", m.payload, "text payload")]);
  }));
  document.getElementById("dead-count").textContent = `(${deadList.length})`;
  document.querySelector("#queue-dead tbody").replaceChildren(...deadList.map(m => {
    const death = ((m.headers || {})["x-death"] || [{}])[0];
    return rowOf([m.id || "–", death.reason || "?", death.time ? new Date(
      (typeof death.time === "number" ? death.time : Date.parse(death.time) / 1000) * 1000)
      .toLocaleString() : "–", el("td", m.body ?? JSON.stringify(m.json) ?? m.body_base64, "text")]);
  }));
  document.getElementById("dead-replay").disabled = !deadList.length;
  document.getElementById("dead-purge").disabled = !deadList.length;
}

function wireQueueButtons() {
  document.getElementById("queue-purge").onclick = () => act(openQueue(), "purge");
  document.getElementById("queue-delete").onclick = () => act(openQueue(), "delete");
  document.getElementById("dead-replay").onclick = async () => {
    await api(queuePath(openQueue(), "/dead-letters/replay"), { ...JSON_POST, body: "{}" });
    refresh();
  };
  document.getElementById("dead-purge").onclick = async () => {
    if (!confirm("Delete every dead letter of this queue?")) return;
    await api(queuePath(openQueue(), "/dead-letters"), { method: "DELETE" });
    refresh();
  };
}

// -- exchanges, connections, the node -------------------------------------------------------

async function exchangesPage() {
  const [exchanges, bindings] = await Promise.all([json("/api/exchanges"), json("/api/bindings")]);
  document.querySelector("#exchanges tbody").replaceChildren(...exchanges.map(e => {
    const tr = rowOf([e.name || "(default)", e.vhost, e.type, e.durable ? "yes" : "no",
                      e.auto_delete ? "yes" : "no", e.internal ? "yes" : "no", e.policy || "–",
                      el("td", JSON.stringify(e.arguments), "text")]);
    tr.dataset.exchange = e.name;
    return tr;
  }));
  document.querySelector("#bindings tbody").replaceChildren(...bindings.map(b => rowOf([
    b.source || "(default)", b.vhost, b.destination, b.destination_type, b.routing_key,
    el("td", JSON.stringify(b.arguments), "text")])));
}

async function connectionsPage() {
  const [connections, channels] = await Promise.all([json("/api/connections"),
                                                     json("/api/channels")]);
  document.querySelector("#connections-table tbody").replaceChildren(...connections.map(c => {
    const close = button("close", async () => {
      if (!confirm(`Close '${c.name}'?`)) return;
      await api(`/api/connections/${enc(c.name)}`,
                { method: "DELETE", headers: { "X-Reason": "closed from the dashboard" } });
      refresh();
    }, "action-close");
    const tr = rowOf([c.name, c.user, c.vhost,
                      (c.client_properties || {}).connection_name || c.client || "–",
                      fmt(c.channels), fmt(c.consumers), c.blocked ? "blocked" : c.state,
                      td(close)]);
    tr.dataset.connection = c.name;
    return tr;
  }));
  document.querySelector("#channels tbody").replaceChildren(...channels.map(c => rowOf([
    c.name, c.user, c.vhost, fmt(c.consumer_count), fmt(c.prefetch_count),
    fmt(c.messages_unacknowledged)])));
}

async function nodePage() {
  const [node] = await json("/api/nodes");
  document.getElementById("node-cards").replaceChildren(
    card("memory", `${bytes(node.mem_used)} of ${bytes(node.mem_limit)}`, node.mem_alarm),
    card("disk free", `${bytes(node.disk_free)}`, node.disk_free_alarm),
    card("descriptors", `${fmt(node.fd_used)} of ${fmt(node.fd_total)}`),
    card("sockets", `${fmt(node.sockets_used)} of ${fmt(node.sockets_total)}`),
    card("uptime", age(node.uptime / 1000)),
    card("alarms", [node.mem_alarm && "memory", node.disk_free_alarm && "disk"]
      .filter(Boolean).join(", ") || "none", node.mem_alarm || node.disk_free_alarm));
  facts(document.getElementById("node-facts"), [
    ["node", node.name], ["version", `${node.product} ${node.version}`],
    ["process", node.os_pid], ["processors", String(node.processors)],
    ["disk free limit", bytes(node.disk_free_limit)]]);
}

function transitionTable(m) {
  // per transition since the broker started: committed, rate, failures, handler and commit p99
  const wrap = el("div", undefined, "scroll");
  const table = el("table", undefined, "transitions");
  table.appendChild(el("thead")).appendChild(rowOf(
    ["transition", "committed", "per s", "failed", "handler p99 ms", "commit p99 ms"]
      .map(h => el("th", h))));
  const rows = Object.entries(m.transitions || {}).map(([name, n]) => rowOf([
    name, fmt(n.count), fmt(n.rate, 1), fmt(n.failures), ms(n.handler_ms.p99_ms),
    ms(n.commit_ms.p99_ms)]));
  rows.push(rowOf(["dead letters", fmt(m.dead_lettered || 0), "", "", "", ""]));
  table.appendChild(el("tbody")).replaceChildren(...rows);
  wrap.appendChild(table);
  return wrap;
}

async function machinesPage() {
  const machines = (await json("/api/machines")).slice(0, 20);
  const shown = await Promise.all(machines.map(async m => {
    const box = el("div", undefined, "machine");
    box.dataset.machine = m.name;
    box.appendChild(el("h2", `${m.name} (${m.vhost})`));
    const states = Object.entries(m.states).map(
      ([state, n]) => `${state}: ${fmt(n)} (oldest ${age(m.oldest_s[state])})`);
    box.appendChild(el("div", `${fmt(m.instances)} instances · ${states.join(" · ") || "none yet"}`,
                       "facts"));
    const picture = el("div", undefined, "picture");
    const drawn = await api(`/api/machine-diagrams/${enc(m.vhost)}/${enc(m.name)}`);
    if (drawn.ok) picture.innerHTML = await drawn.text();  // drawn by the server, escaped
    else picture.textContent = "no picture: its runner has not described it";
    box.appendChild(picture);
    box.appendChild(transitionTable(m));
    return box;
  }));
  document.getElementById("machines").replaceChildren(
    ...(shown.length ? shown : [el("p", "No state machines yet.", "facts")]));
}

// -- routing by the hash --------------------------------------------------------------------

const PAGES = { overview: overviewPage, queue: queuePage, exchanges: exchangesPage,
                connections: connectionsPage, machines: machinesPage, node: nodePage };

function pageName() {
  const h = location.hash;
  if (h.startsWith("#/queues/")) return "queue";
  const name = h.replace("#/", "");
  return PAGES[name] ? name : "overview";
}

async function refresh() {
  const status = document.getElementById("status");
  const name = pageName();
  document.querySelectorAll("main.page").forEach(p => { p.hidden = p.id !== `page-${name}`; });
  document.querySelectorAll("nav a").forEach(a => {
    a.className = a.dataset.page === name ? "current" : "";
  });
  try {
    await PAGES[name]();
    status.textContent = `live · ${new Date().toLocaleTimeString()}`; status.className = "status live";
  } catch (e) {
    status.textContent = `unreachable (${e})`; status.className = "status down";
  }
}

wireQueueButtons();
window.addEventListener("hashchange", refresh);
seedOverview().then(() => { refresh(); setInterval(refresh, 1000); });
