// tidings dashboard: polls /api/overview and /api/queues every second and draws what it
// sees. No build step, no dependencies: plain DOM and <canvas>.
"use strict";

const HISTORY = 120;
const history = { ready: [], publish: [], deliver: [], queues: {} };

function fmt(n, digits = 0) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function ms(v) { return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(0); }

function push(list, value) { list.push(value); if (list.length > HISTORY) list.shift(); }

function draw(canvas, series, colors) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...series.flat());
  ctx.strokeStyle = "#eef0f5";
  for (let i = 1; i < 4; i++) { ctx.beginPath(); ctx.moveTo(0, h * i / 4); ctx.lineTo(w, h * i / 4); ctx.stroke(); }
  series.forEach((points, k) => {
    ctx.strokeStyle = colors[k]; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach((v, i) => {
      const x = (i / Math.max(points.length - 1, 1)) * w, y = h - 4 - (v / max) * (h - 8);
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#6b7385"; ctx.font = "11px system-ui"; ctx.fillText(fmt(max), 4, 12);
}

function sparkline(name, value) {
  const list = (history.queues[name] = history.queues[name] || []);
  push(list, value);
  const c = document.createElement("canvas"); c.width = 120; c.height = 28;
  draw(c, [list], ["#3b6fe0"]);
  return c;
}

async function replay(vhost, name, button) {
  button.disabled = true;
  const url = `/api/queues/${encodeURIComponent(vhost)}/${encodeURIComponent(name)}/dead-letters/replay`;
  await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
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
    b.onclick = () => replay(q.vhost, q.name, b);
    dead.appendChild(b);
  }
  tr.appendChild(dead);
  return tr;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [overview, queues, connections] = await Promise.all([
      fetch("/api/overview").then(r => r.json()),
      fetch("/api/queues").then(r => r.json()),
      fetch("/api/connections").then(r => r.json()),
    ]);
    document.querySelector("#connections-table tbody").replaceChildren(...connections.map(c => {
      const tr = document.createElement("tr");
      [c.peer, c.user, c.vhost, c.client || "–", fmt(c.channels), fmt(c.consumers),
       c.blocked ? "blocked" : "running"].forEach(text => {
        const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
      });
      return tr;
    }));
    document.getElementById("ready").textContent = fmt(overview.ready);
    document.getElementById("unacked").textContent = fmt(overview.unacked);
    document.getElementById("delayed").textContent = fmt(overview.delayed);
    document.getElementById("publish-rate").textContent = fmt(overview.rates.published, 1);
    document.getElementById("deliver-rate").textContent = fmt(overview.rates.delivered, 1);
    document.getElementById("connections").textContent = fmt(overview.connections);
    document.getElementById("consumers").textContent = fmt(overview.consumers);
    push(history.ready, overview.ready);
    push(history.publish, overview.rates.published);
    push(history.deliver, overview.rates.delivered);
    draw(document.getElementById("chart-ready"), [history.ready], ["#3b6fe0"]);
    draw(document.getElementById("chart-rates"), [history.publish, history.deliver], ["#3b6fe0", "#15803d"]);
    const dead = {};
    queues.filter(q => q.name.endsWith(".dead")).forEach(q => { dead[q.name.slice(0, -5)] = q.ready; });
    const shown = queues.filter(q => !q.name.endsWith(".dead") && !q.name.startsWith("tidings.http."));
    const body = document.querySelector("#queues tbody");
    body.replaceChildren(...shown.map(q => row(q, dead[q.name])));
    status.textContent = `live · ${new Date().toLocaleTimeString()}`; status.className = "status live";
  } catch (e) {
    status.textContent = `unreachable (${e})`; status.className = "status down";
  }
}

refresh();
setInterval(refresh, 1000);
