// The delivery dashboard of one alert (alerts/dashboard.py).
//
// The page comes with the counts in its table (the accessible source of
// truth) and in #dashboard-data; this draws them as stacked bars (an inline
// SVG, no library) and keeps table, bars and progress current with the
// `deliveries` messages of /ws/alerts/console/<pk>/deliveries/. The
// connection's state is shown in words; the live regions speak only when
// something meaningful changes (the connection is lost or back, every
// delivery is recorded), never on each update. Text is set with textContent:
// nothing received is parsed as HTML.

import { HubSocket } from "/static/hub/js/realtime.js";

const SVG = "http://www.w3.org/2000/svg";
const STATUSES = ["queued", "sending", "sent", "delivered", "failed"];
// Colours and patterns: see alerts/static/alerts/css/dashboard.css for the contrast ratios.
const LOOK = {
  queued: { colour: "#5f6368", pattern: "hatch" },
  sending: { colour: "#0a4f8f", pattern: "dots" },
  sent: { colour: "#1a6b3c", pattern: "stripes" },
  delivered: { colour: "#0f5132", pattern: null },
  failed: { colour: "#a4161a", pattern: "cross" },
};
const ROW = 64; // px per channel: its name above, its bar below
const BAR = 28;

const data = JSON.parse(document.getElementById("dashboard-data").textContent);
const text = data.text;
const clockOffset = data.server_now - Date.now() / 1000; // the server's clock minus ours
let current = data.counts;

const $ = (id) => document.getElementById(id);

/** A translated template with %(name)s placeholders (Python's), filled. */
export function fill(template, params) {
  return template
    .replace(/%\((\w+)\)s/g, (_, name) => String(params[name] ?? ""))
    .replace(/%%/g, "%");
}

/** H:MM:SS, as alerts.dashboard.duration writes it. */
export function duration(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  return `${Math.floor(whole / 3600)}:${pad(Math.floor((whole % 3600) / 60))}:${pad(whole % 60)}`;
}

function isoDuration(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  return `PT${Math.floor(whole / 3600)}H${Math.floor((whole % 3600) / 60)}M${whole % 60}S`;
}

function timeElement(seconds) {
  const time = document.createElement("time");
  time.dateTime = isoDuration(seconds);
  time.textContent = duration(seconds);
  return time;
}

const finished = (counts) => counts.total > 0 && counts.finished_at != null;

// --- The table and the progress ---------------------------------------------------

function setCell(channel, status, value) {
  const cell = document.querySelector(
    `#dashboard-table td[data-channel="${channel}"][data-status="${status}"]`,
  );
  if (cell && cell.textContent !== String(value)) cell.textContent = String(value);
}

function renderTable(counts) {
  for (const [channel, byStatus] of Object.entries(counts.counts)) {
    let total = 0;
    for (const status of STATUSES) {
      setCell(channel, status, byStatus[status] ?? 0);
      total += byStatus[status] ?? 0;
    }
    setCell(channel, "total", total);
  }
  for (const status of STATUSES) {
    const sum =
      Object.values(counts.counts).reduce((n, byStatus) => n + (byStatus[status] ?? 0), 0);
    setCell("all", status, sum);
  }
  setCell("all", "total", counts.total);
}

function renderProgress(counts) {
  const main = $("dashboard-progress");
  const detail = document.querySelector(".dashboard-progress__detail");
  if (counts.total === 0) {
    main.textContent = text.empty;
    detail.hidden = true;
  } else {
    main.textContent = fill(text.progress, counts);
    $("dashboard-percent").textContent = fill(text.percent, counts);
    $("dashboard-failed").textContent = fill(text.failed, counts);
    detail.hidden = false;
  }
  const bar = $("dashboard-bar");
  bar.max = Math.max(counts.total, 1);
  bar.value = counts.recorded;
  bar.textContent = `${counts.percent}%`;
  const took = $("dashboard-took");
  if (finished(counts) && counts.published_at != null) {
    took.replaceChildren(timeElement(counts.finished_at - counts.published_at));
  }
}

function tick() {
  if (current.published_at == null) return;
  const now = Date.now() / 1000 + clockOffset;
  $("dashboard-since").replaceChildren(timeElement(now - current.published_at));
}

// --- The chart ---------------------------------------------------------------------------

function svg(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function patternFor(status) {
  const { colour, pattern } = LOOK[status];
  const tile = svg("pattern", {
    id: `dashboard-pattern-${status}`,
    width: 8,
    height: 8,
    patternUnits: "userSpaceOnUse",
  });
  tile.append(svg("rect", { width: 8, height: 8, fill: colour }));
  const ink = { stroke: "#ffffff", "stroke-width": 1.5, "stroke-opacity": 0.6, fill: "none" };
  if (pattern === "hatch") {
    tile.append(svg("path", { d: "M-2,2 l4,-4 M0,8 l8,-8 M6,10 l4,-4", ...ink }));
  }
  if (pattern === "cross") {
    tile.append(svg("path", { d: "M0,0 l8,8 M8,0 l-8,8", ...ink }));
  }
  if (pattern === "stripes") tile.append(svg("path", { d: "M0,2 h8 M0,6 h8", ...ink }));
  if (pattern === "dots") {
    tile.append(svg("circle", { cx: 4, cy: 4, r: 1.6, fill: "#ffffff", "fill-opacity": 0.7 }));
  }
  return tile;
}

const chart = { svg: null, bars: null };

function buildChart() {
  const figure = $("dashboard-chart");
  chart.svg = svg("svg", { role: "img", height: Object.keys(data.channels).length * ROW });
  const defs = svg("defs");
  for (const status of STATUSES) defs.append(patternFor(status));
  chart.bars = svg("g");
  chart.svg.append(defs, chart.bars);
  $("dashboard-chart-drawing").replaceChildren(chart.svg);
  const legend = $("dashboard-legend");
  for (const status of STATUSES) {
    const item = document.createElement("li");
    item.dataset.status = status;
    const swatch = svg("svg", { "aria-hidden": "true", viewBox: "0 0 24 16", focusable: "false" });
    const fill = `url(#dashboard-pattern-${status})`;
    swatch.append(svg("rect", { width: 24, height: 16, fill }));
    item.append(swatch, data.statuses[status]);
    legend.append(item);
  }
  figure.hidden = false;
  if (typeof ResizeObserver !== "undefined") {
    let width = 0;
    new ResizeObserver(() => {
      const now = chart.svg.getBoundingClientRect().width;
      if (Math.abs(now - width) >= 1) {
        width = now;
        drawChart(current);
      }
    }).observe(chart.svg);
  }
}

function drawChart(counts) {
  const width = chart.svg.getBoundingClientRect().width || 600;
  const channels = Object.keys(data.channels);
  const totals = channels.map((channel) =>
    STATUSES.reduce((n, status) => n + (counts.counts[channel]?.[status] ?? 0), 0),
  );
  const scale = Math.max(1, ...totals);
  const groups = [];
  const summary = [];
  channels.forEach((channel, row) => {
    const y = row * ROW;
    const g = svg("g", { "data-channel": channel });
    const label = svg("text", { x: 0, y: y + 16, class: "bar-label" });
    label.textContent = `${data.channels[channel]} — ${totals[row]}`;
    g.append(label);
    // The track: the bar's full extent, outlined, so an empty channel still shows.
    g.append(
      svg("rect", {
        x: 0.5,
        y: y + 24.5,
        width: Math.max(0, width - 1),
        height: BAR - 1,
        fill: "#ffffff",
        stroke: "#6b7280",
      }),
    );
    const parts = [];
    let x = 0;
    for (const status of STATUSES) {
      const count = counts.counts[channel]?.[status] ?? 0;
      if (!count) continue;
      parts.push(`${data.statuses[status]} ${count}`);
      const w = (count / scale) * width;
      const segment = svg("rect", {
        x,
        y: y + 24,
        width: Math.max(w - 2, 1), // a 2 px white gap between segments
        height: BAR,
        fill: `url(#dashboard-pattern-${status})`,
        "data-status": status,
        "data-count": count,
      });
      const title = svg("title");
      title.textContent = `${data.statuses[status]}: ${count}`;
      segment.append(title);
      g.append(segment);
      const digits = String(count).length * 8 + 8;
      if (w - 2 >= digits + 6) {
        g.append(
          svg("rect", { x: x + 3, y: y + 30, width: digits, height: 16, rx: 3, fill: "#ffffff" }),
        );
        const number = svg("text", { x: x + 7, y: y + 42.5, class: "segment-count" });
        number.textContent = String(count);
        g.append(number);
      }
      x += w;
    }
    summary.push(`${data.channels[channel]}: ${parts.length ? parts.join(", ") : text.none}`);
    groups.push(g);
  });
  chart.bars.replaceChildren(...groups);
  chart.svg.setAttribute("aria-label", `${text.chart_label}. ${summary.join("; ")}.`);
}

// --- Live ----------------------------------------------------------------------------------

function announce(message) {
  $("dashboard-announce").textContent = message;
}

export function render(counts) {
  const wasFinished = finished(current);
  current = counts;
  renderTable(counts);
  renderProgress(counts);
  if (chart.svg) drawChart(counts);
  tick();
  if (!wasFinished && finished(counts)) announce(fill(text.complete, counts));
}

const connection = $("dashboard-connection");

function showConnection(state) {
  if (connection.dataset.state === state) return; // the live region speaks on change only
  connection.dataset.state = state;
  connection.textContent = text[state];
  connection.hidden = false;
}

buildChart();
drawChart(current);
tick();
setInterval(tick, 1000);
// Shown before the first connection, so that opening the page says nothing;
// the region then speaks when the connection is lost and when it is back.
connection.dataset.state = "live";
connection.textContent = text.live;
connection.hidden = false;

const hub = new HubSocket(data.socket, {
  onMessage: (message) => {
    if (message.type === "deliveries") render(message);
  },
  onState: (state, detail) => {
    if (state === "open") showConnection("live");
    else if (state === "reconnecting") showConnection("lost");
    else if (state === "closed" && detail?.fatal) showConnection("closed");
  },
});

window.egminaDashboard = { hub, render, get counts() { return current; } };
