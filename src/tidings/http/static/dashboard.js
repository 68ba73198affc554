// tidings dashboard: polls /api/overview, /api/queues and /api/streams every second and draws what it
// sees. No build step, no dependencies: plain DOM and <canvas>.
"use strict";

const HISTORY = 120;
const history = { ready: [], publish: [], deliver: [], queues: {} };

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function ms(v) { return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0); }

// API URLs are built on location.origin: a page opened as http://user:pass@host/ has the
// credentials in its own URL, and fetch() refuses URLs that carry credentials.
function api(path, options = {}) {
  return fetch(new URL(path, location.origin), { credentials: "same-origin", ...options });
}

function queuePath(q, rest = "") {
  return `/api/queues/${encodeURIComponent(q.vhost)}/${encodeURIComponent(q.name)}${rest}`;
}

function push(list, value) { list.push(value); if (list.length > HISTORY) list.shift(); }

// A line chart with a y axis (0 to the largest value, 4 ticks, in `unit`), an x axis over the
// last HISTORY seconds, and a legend naming each series.
function draw(canvas, series, colors, names = [], unit = "") {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const small = names.length === 0;  // sparklines: no axes
  const left = small ? 0 : 48, bottom = small ? 0 : 18, top = small ? 0 : 18;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series.flat());
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
  series.forEach((points, k) => {
    ctx.strokeStyle = colors[k]; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((v, i) => {
      const x = left + (i / Math.max(HISTORY - 1, 1)) * plotW + (HISTORY - points.length) / HISTORY * plotW;
      const y = top + plotH - (v / max) * plotH;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
  if (small) return;
  ctx.fillStyle = "#6b7385"; ctx.textAlign = "left";
  ctx.fillText(`−${HISTORY} s`, left, h - 4);
  ctx.textAlign = "right"; ctx.fillText("now", w, h - 4);
  ctx.textAlign = "left"; ctx.fillText(unit, 0, 11);
  let x = Math.max(left, ctx.measureText(unit).width) + 16;
  names.forEach((name, k) => {
    ctx.fillStyle = colors[k]; ctx.fillRect(x, 4, 10, 10);
    ctx.fillStyle = "#333"; ctx.fillText(name, x + 14, 13);
    x += 24 + ctx.measureText(name).width;
  });
}

function sparkline(name, value) {
  const list = (history.queues[name] = history.queues[name] || []);
  push(list, value);
  const c = document.createElement("canvas"); c.width = 120; c.height = 28;
  draw(c, [list], ["#3b6fe0"]);
  return c;
}

const JSON_POST = { method: "POST", headers: { "Content-Type": "application/json" } };

async function replay(q, button) {
  button.disabled = true;
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
  } else if (action === "get") {
    const got = await api(queuePath(q, "/receive"),
                          { ...JSON_POST, body: JSON.stringify({ max: 1, visibility_ms: 5000 }) })
      .then(r => r.json());
    const m = (got.messages || [])[0];
    if (m) {
      await api(`/api/receipts/${encodeURIComponent(m.receipt)}/nack`,
                { ...JSON_POST, body: JSON.stringify({ requeue: true }) });
      shown.textContent = `${q.name}: ${m.body ?? JSON.stringify(m.json) ?? m.body_base64}`;
    } else {
      shown.textContent = `${q.name}: no ready message`;
    }
  }
  refresh();
}

function row(q, deadCount) {
  const tr = document.createElement("tr");
  tr.dataset.queue = q.name;
  const cells = [
    q.name, fmt(q.ready), fmt(q.unacked), fmt(q.delayed), fmt(q.consumers),
    q.oldest_ready_age_s === null ? "–" : `${q.oldest_ready_age_s.toFixed(1)} s`,
    fmt(q.rates.published, 1), fmt(q.rates.delivered, 1), fmt(q.rates.acked, 1),
    `${ms(q.waiting_time.p50_ms)} / ${ms(q.waiting_time.p99_ms)} ms`,
    `${ms(q.processing_time.p50_ms)} / ${ms(q.processing_time.p99_ms)} ms`,
  ];
  cells.forEach((text, i) => {
    const td = document.createElement("td"); td.textContent = text;
    if (i === 1) td.className = "ready";
    tr.appendChild(td);
  });
  const spark = document.createElement("td"); spark.appendChild(sparkline(q.name, q.ready)); tr.appendChild(spark);
  const dead = document.createElement("td");
  if (deadCount !== undefined) {
    const b = document.createElement("button");
    b.textContent = `replay ${deadCount}`; b.disabled = deadCount === 0;
    b.onclick = () => replay(q, b);
    dead.appendChild(b);
  }
  tr.appendChild(dead);
  const actions = document.createElement("td");
  for (const action of ["get", "purge", "delete"]) {
    const b = document.createElement("button");
    b.textContent = action; b.className = `action-${action}`;
    b.onclick = () => act(q, action);
    actions.appendChild(b);
  }
  tr.appendChild(actions);
  return tr;
}

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

function streamRow(s) {
  const tr = document.createElement("tr");
  tr.dataset.stream = s.name;
  const now = Date.now() / 1000;
  const kept = [s.max_bytes === null ? null : bytes(s.max_bytes),
                s.max_age_s === null ? null : age(s.max_age_s)].filter(Boolean);
  const cells = [
    s.name, fmt(s.records), bytes(s.bytes),
    s.first_offset === null ? "–" : `${fmt(s.first_offset)} … ${fmt(s.last_offset)}`,
    s.last_timestamp === null ? "–" : `${age(Math.max(0, now - s.last_timestamp))} ago`,
    kept.length ? kept.join(", ") : "none",
    s.readers.map(r => `${r.name}: ${fmt(r.lag)} (${age(r.lag_s)})`).join(" · ") || "–",
  ];
  cells.forEach((text, i) => {
    const td = document.createElement("td"); td.textContent = text;
    if (i === 1) td.className = "records";
    if (i === 6) td.className = "readers";
    tr.appendChild(td);
  });
  return tr;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [overview, queues, connections, streams] = await Promise.all([
      api("/api/overview").then(r => r.json()),
      api("/api/queues").then(r => r.json()),
      api("/api/connections").then(r => r.json()),
      api("/api/streams").then(r => r.json()),
    ]);
    document.querySelector("#streams tbody").replaceChildren(...streams.map(streamRow));
    document.querySelector("#connections-table tbody").replaceChildren(...connections.map(c => {
      const tr = document.createElement("tr");
      [c.peer, c.user, c.vhost, c.client || "–", fmt(c.channels), fmt(c.consumers),
       c.blocked ? "blocked" : "running"].forEach(text => {
        const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      return tr;
    }));
    // Queues only: a stream keeps what it delivered (its records are in the Streams table) and
    // dead letters wait for a person (their own card), so neither counts as work ready.
    const dead = {};
    queues.filter(q => q.name.endsWith(".dead")).forEach(q => { dead[q.name.slice(0, -5)] = q.ready; });
    const isStream = new Set(streams.map(s => `${s.vhost}\u001f${s.name}`));
    const shown = queues.filter(q => !q.name.endsWith(".dead") && !q.name.startsWith("tidings.http.")
                                     && !isStream.has(`${q.vhost}\u001f${q.name}`));
    const readyTotal = shown.reduce((sum, q) => sum + q.ready, 0);
    const deadTotal = Object.values(dead).reduce((sum, n) => sum + n, 0);
    document.getElementById("ready").textContent = fmt(readyTotal);
    document.getElementById("dead-total").textContent = fmt(deadTotal);
    document.getElementById("unacked").textContent = fmt(overview.unacked);
    document.getElementById("delayed").textContent = fmt(overview.delayed);
    document.getElementById("publish-rate").textContent = fmt(overview.rates.published, 1);
    document.getElementById("deliver-rate").textContent = fmt(overview.rates.delivered, 1);
    document.getElementById("connections").textContent = fmt(overview.connections);
    document.getElementById("consumers").textContent = fmt(overview.consumers);
    push(history.ready, readyTotal);
    push(history.publish, overview.rates.published);
    push(history.deliver, overview.rates.delivered);
    draw(document.getElementById("chart-ready"), [history.ready], ["#3b6fe0"], ["ready"],
         "messages");
    draw(document.getElementById("chart-rates"), [history.publish, history.deliver],
         ["#3b6fe0", "#15803d"], ["published", "delivered"], "messages / s");
    const body = document.querySelector("#queues tbody");
    body.replaceChildren(...shown.map(q => row(q, dead[q.name])));
    status.textContent = `live · ${new Date().toLocaleTimeString()}`; status.className = "status live";
  } catch (e) {
    status.textContent = `unreachable (${e})`; status.className = "status down";
  }
}

refresh();
setInterval(refresh, 1000);
