// The lambdaflow dashboard: everything it shows comes from the JSON routes of `lambdaflow serve`,
// redrawn every REFRESH_MS without reloading the page.
"use strict";

const REFRESH_MS = 5000;
const DAILY_DAYS = 14;
const COLORS = { batch: "#2f6fb0", realtime: "#e8833a", mixed: "#3f9c5a" };
const SOURCES = ["batch", "realtime", "mixed"];
const CONFIG = { displayModeBar: false, responsive: true };

let definitions = null;

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.error || `${path}: HTTP ${response.status}`);
  }
  return body;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function daysBefore(day, n) {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() - n);
  return isoDay(date);
}

function shown(metric, value) {
  if (value === null || value === undefined) return "–";
  if (metric.money) return (value / 100).toLocaleString("en", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  return value.toLocaleString("en");
}

function scaled(metric, value) {
  return value === null || value === undefined ? null : metric.money ? value / 100 : value;
}

function title(metric) {
  return metric.money ? `${metric.name.replace(/_cents$/, "")} (money)` : metric.name;
}

function ensureChart(parent, id) {
  let div = document.getElementById(id);
  if (!div) {
    div = document.createElement("div");
    div.id = id;
    div.className = "chart";
    document.getElementById(parent).appendChild(div);
  }
  return div;
}

function boundaryMarks(boundary) {
  if (!boundary) return { shapes: [], annotations: [] };
  const x = boundary.slice(0, 19).replace("T", " ");
  return {
    shapes: [{ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color: "#1f2933", dash: "dash", width: 2 } }],
    annotations: [{ x, yref: "paper", y: 1, text: "boundary", showarrow: false, xanchor: "left", yanchor: "bottom", font: { size: 11 } }],
  };
}

function layout(metric, extra) {
  return Object.assign(
    {
      title: { text: title(metric), font: { size: 14 }, x: 0.02 },
      margin: { l: 60, r: 15, t: 36, b: 40 },
      barmode: "stack",
      showlegend: true,
      legend: { orientation: "h", y: -0.22, font: { size: 11 }, traceorder: "normal" },
      yaxis: { rangemode: "tozero", tickformat: "~s" },
      paper_bgcolor: "#fff",
      plot_bgcolor: "#fff",
    },
    extra,
  );
}

// One bar trace per serving source (batch, realtime, mixed) that has rows; `where` gives a row's x
// position and the hover text's time.
function barsBySource(rows, metric, where) {
  return SOURCES.map((source) => {
    const picked = rows.filter((row) => row.source === source);
    return {
      type: "bar",
      name: source,
      marker: { color: COLORS[source] },
      x: picked.map((row) => where(row).x),
      y: picked.map((row) => scaled(metric, row[metric.name])),
      customdata: picked.map((row) => where(row).label),
      hovertemplate: "%{customdata}: %{y}<extra>" + source + "</extra>",
    };
  }).filter((trace) => trace.x.length);
}

function drawHourly(rows, boundary) {
  const marks = boundaryMarks(boundary);
  const hour = (row) => String(row.hour).padStart(2, "0");
  const where = (row) => ({ x: `${row.event_date} ${hour(row)}:30`, label: `${row.event_date} ${hour(row)}:00 UTC` });
  for (const metric of definitions) {
    Plotly.react(
      ensureChart("hourly", `hourly-${metric.name}`),
      barsBySource(rows, metric, where),
      layout(metric, { shapes: marks.shapes, annotations: marks.annotations, bargap: 0.1, xaxis: { type: "date" } }),
      CONFIG,
    );
  }
}

function halfDayAround(first, last) {
  const start = new Date(`${first}T00:00:00Z`);
  const end = new Date(`${last}T00:00:00Z`);
  start.setUTCHours(-12);
  end.setUTCHours(12);
  const shown = (date) => date.toISOString().slice(0, 16).replace("T", " ");
  return [shown(start), shown(end)];
}

function drawDaily(rows) {
  for (const metric of definitions) {
    Plotly.react(
      ensureChart("daily", `daily-${metric.name}`),
      barsBySource(rows, metric, (row) => ({ x: row.event_date, label: row.event_date })),
      layout(metric, {
        xaxis: {
          type: "date",
          tickformat: "%b %d",
          tickangle: 0,
          tick0: rows[rows.length - 1].event_date,
          dtick: 2 * 86400000,
          range: halfDayAround(rows[0].event_date, rows[rows.length - 1].event_date),
        },
      }),
      CONFIG,
    );
  }
}

function drawToday(hourly, today, yesterday) {
  const hour = new Date().getUTCHours();
  document.getElementById("today-note").textContent =
    `${today} hours 00–${String(hour).padStart(2, "0")} (the current hour so far) against the same hours of ${yesterday}, UTC.`;
  const sum = (day, name) =>
    hourly.filter((row) => row.event_date === day && row.hour <= hour).reduce((total, row) => total + (row[name] || 0), 0);
  const lines = ["<tr><th>metric</th><th>today so far</th><th>yesterday, same hours</th><th>change</th></tr>"];
  for (const metric of definitions) {
    const now = sum(today, metric.name);
    const before = sum(yesterday, metric.name);
    const change = before ? ((now - before) / before) * 100 : null;
    const css = change === null ? "" : change >= 0 ? "up" : "down";
    lines.push(
      `<tr data-metric="${metric.name}" data-today="${now}" data-yesterday="${before}">` +
        `<td title="${metric.description.replace(/"/g, "&quot;")}">${title(metric)}</td>` +
        `<td>${shown(metric, now)}</td><td>${shown(metric, before)}</td>` +
        `<td class="${css}">${change === null ? "–" : (change >= 0 ? "+" : "") + change.toFixed(1) + " %"}</td></tr>`,
    );
  }
  document.getElementById("today-table").innerHTML = lines.join("");
}

function drawWorkers(workers) {
  const layers = ["archiver", "stream"];
  const bars = (field) =>
    layers.map((layer) => {
      const picked = workers.filter((row) => row.layer === layer);
      return { type: "bar", name: layer, x: picked.map((row) => `partition ${row.partition}`), y: picked.map((row) => row[field]) };
    });
  const base = { margin: { l: 55, r: 15, t: 36, b: 40 }, barmode: "group", legend: { orientation: "h", y: -0.22 } };
  Plotly.react("lag-chart", bars("lag"), Object.assign({ title: { text: "lag (messages)", font: { size: 14 }, x: 0.02 } }, base), CONFIG);
  Plotly.react(
    "delay-chart",
    bars("commit_delay_seconds"),
    Object.assign({ title: { text: "freshness: last commit − its record's Kafka time (s)", font: { size: 14 }, x: 0.02 } }, base),
    CONFIG,
  );
  const lines = ["<tr><th>worker</th><th>partition</th><th>next offset</th><th>lag</th><th>freshness (s)</th><th>status age (s)</th><th>running</th></tr>"];
  for (const row of workers) {
    lines.push(
      `<tr><td>${row.layer}</td><td>${row.partition}</td><td>${row.next_offset ?? "–"}</td><td>${row.lag ?? "–"}</td>` +
        `<td>${row.commit_delay_seconds ?? "–"}</td><td>${row.status_age_seconds ?? "–"}</td>` +
        `<td class="${row.running ? "ok" : "bad"}">${row.running ? "yes" : "no"}</td></tr>`,
    );
  }
  document.getElementById("workers-table").innerHTML = lines.join("");
}

function drawBuilds(builds) {
  const lines = ["<tr><th>day</th><th>built at</th><th>built until</th><th>reconciled</th><th>differences (speed − batch)</th></tr>"];
  for (const build of builds) {
    const reconciled = build.reconciled;
    let verdict = "not yet";
    let differences = "";
    if (reconciled) {
      verdict = reconciled.within_threshold ? '<span class="ok">yes</span>' : '<span class="bad">no</span>';
      differences = Object.entries(reconciled.metrics)
        .filter(([, row]) => row.difference)
        .map(([name, row]) => `${name} ${row.difference > 0 ? "+" : ""}${row.difference} (unexplained ${row.unexplained ?? "–"})`)
        .join("; ") || "none";
    }
    lines.push(`<tr><td>${build.event_date}</td><td>${build.built_at ?? ""}</td><td>${build.built_until ?? ""}</td><td>${verdict}</td><td>${differences}</td></tr>`);
  }
  if (!builds.length) lines.push('<tr><td colspan="5">no day built yet</td></tr>');
  document.getElementById("builds-table").innerHTML = lines.join("");
}

function drawHeader(status, health) {
  document.getElementById("boundary").textContent = `boundary: ${status.boundary || "none yet (all realtime)"}`;
  const element = document.getElementById("health");
  const sick = Object.entries(health.components).filter(([, part]) => !part.healthy);
  element.className = sick.length ? "bad" : "ok";
  element.textContent = sick.length ? `unhealthy: ${sick.map(([name]) => name).join(", ")}` : "healthy";
  element.title = sick.map(([name, part]) => `${name}: ${part.why.join("; ")}`).join("\n");
  document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
}

async function refresh() {
  if (!definitions) definitions = await getJson("/api/definitions");
  const today = isoDay(new Date());
  const yesterday = daysBefore(today, 1);
  const [daily, hourly, status, workers, builds, health] = await Promise.all([
    getJson(`/api/query?from=${daysBefore(today, DAILY_DAYS - 1)}&to=${today}`),
    getJson(`/api/query?from=${yesterday}&to=${today}&hourly=true`),
    getJson("/api/status"),
    getJson("/api/workers"),
    getJson("/api/builds?limit=10"),
    getJson("/api/health"),
  ]);
  drawHeader(status, health);
  drawToday(hourly, today, yesterday);
  drawHourly(hourly, status.boundary);
  drawDaily(daily);
  drawWorkers(workers);
  drawBuilds(builds);
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

async function loop() {
  try {
    await refresh();
  } catch (error) {
    document.getElementById("updated").textContent = `update failed: ${error.message}`;
  }
  setTimeout(loop, REFRESH_MS);
}

loop();
