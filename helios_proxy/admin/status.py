"""GET /: a live status page (one HTML file, no build step): nodes with role, health and lag, pools,
the query cache's hit rate, queries per second over the last minutes, and (analytics on) the query
shapes with the most time and their latency, refreshed every 2 s from /nodes, /pools, /metrics and
/analytics/queries.
When the API needs a token for reading, open it as /#token=TOKEN."""
from flask import Blueprint, Response

bp = Blueprint("status", __name__)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HeliosProxy status</title>
<style>
 body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
 h1{font-size:1.3em} h2{font-size:1.05em;margin-top:1.5em}
 table{border-collapse:collapse} td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
 .ok{color:#1a7f37} .bad{color:#c62828;font-weight:bold} #chart{border:1px solid #ddd;background:#fafafa}
</style></head><body>
<h1>HeliosProxy <span id="version"></span></h1>
<div id="summary"></div>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>node</th><th>address</th><th>role</th><th>health</th><th>lag (bytes)</th>
<th>reads</th><th>writes</th><th>state</th></tr></thead><tbody></tbody></table>
<h2>Pools</h2>
<table id="pools"><thead><tr><th>node</th><th>database</th><th>user</th><th>mode</th><th>cl_active</th>
<th>cl_waiting</th><th>sv_active</th><th>sv_idle</th><th>maxwait</th></tr></thead><tbody></tbody></table>
<h2>Queries per second</h2>
<svg id="chart" width="640" height="160"></svg>
<div id="analytics" hidden>
<h2>Top queries (most total time)</h2>
<table id="queries"><thead><tr><th>query</th><th>intent</th><th>calls</th><th>errors</th><th>mean ms</th>
<th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>latency (p50 to p99, log scale)</th></tr></thead><tbody></tbody></table>
</div>
<script>
const token = (location.hash.match(/token=([^&]+)/) || [])[1];
const opts = token ? {headers: {Authorization: "Bearer " + token}} : {};
const get = p => fetch(p, opts).then(r => r.json());
const esc = v => String(v ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
function rows(id, items, cells) {
  document.querySelector("#" + id + " tbody").innerHTML =
    items.map(i => "<tr>" + cells(i).map(c => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
function chart(history) {
  const svg = document.getElementById("chart"), w = 640, h = 160;
  const pts = [];
  for (let i = 1; i < history.length; i++) {
    const dt = history[i].t - history[i - 1].t;
    if (dt > 0) pts.push([history[i].t, (history[i].queries - history[i - 1].queries) / dt]);
  }
  if (!pts.length) { svg.innerHTML = '<text x="10" y="20">collecting...</text>'; return; }
  const t0 = pts[0][0], t1 = pts[pts.length - 1][0] || t0 + 1, max = Math.max(1, ...pts.map(p => p[1]));
  const xy = pts.map(([t, q]) => [10 + (w - 20) * (t - t0) / Math.max(1, t1 - t0), h - 20 - (h - 40) * q / max]);
  svg.innerHTML = '<polyline fill="none" stroke="#1565c0" stroke-width="2" points="' +
    xy.map(p => p.join(",")).join(" ") + '"/><text x="10" y="14">max ' + max.toFixed(0) +
    ' q/s</text><text id="qps" x="' + (w - 150) + '" y="14">now ' + pts[pts.length - 1][1].toFixed(0) + ' q/s</text>';
}
function latencyBar(q, top) {  // p50..p99 on a log scale from 0.01 ms to the slowest p99 shown
  const x = v => 4 + 232 * Math.log10(Math.max(v, 0.01) / 0.01) / Math.max(1, Math.log10(top / 0.01));
  const a = x(q.p50_ms), b = x(q.p99_ms);
  return '<svg width="240" height="12"><rect x="' + a + '" y="2" width="' + Math.max(2, b - a) +
    '" height="8" fill="#1565c0"/></svg>';
}
function cacheRate(m) {
  const looked = m.hits + m.misses;
  return looked ? (100 * m.hits / looked).toFixed(1) + "% of " + looked + " reads (" + m.entries + " entries)" : "-";
}
async function refresh() {
  try {
    const [nodes, pools, metrics, version] = await Promise.all(
      [get("/nodes"), get("/pools"), get("/metrics"), get("/version")]);
    document.getElementById("version").textContent = version.version;
    const c = metrics.clients;
    document.getElementById("summary").textContent = "clients: " + c.active + " active, " + c.waiting +
      " waiting, " + c.idle + " idle; failovers: " + metrics.failovers + "; buffered now: " + metrics.buffer.waiting +
      (metrics.cache.enabled ? "; cache hit rate: " + cacheRate(metrics.cache) : "");
    rows("nodes", nodes, n => [esc(n.name), esc(n.address), esc(n.role) + (n.primary ? " (" + esc(n.primary_state) + ")" : ""),
      n.healthy ? '<span class="ok">healthy</span>' : '<span class="bad">unhealthy</span>',
      esc(n.lag_bytes ?? "-"), n.reads, n.writes, n.fenced ? "fenced: " + esc(n.fenced) : n.stale ? "stale" : "in service"]);
    rows("pools", pools, p => [esc(p.node), esc(p.database), esc(p.user), esc(p.mode), p.cl_active, p.cl_waiting,
      p.sv_active, p.sv_idle, p.maxwait]);
    chart(metrics.history);
    const queries = await get("/analytics/queries?limit=10").catch(() => null);
    document.getElementById("analytics").hidden = !Array.isArray(queries);
    if (Array.isArray(queries)) {
      const top = Math.max(1, ...queries.map(q => q.p99_ms || 0));
      rows("queries", queries, q => [esc(q.query.slice(0, 120)), esc(q.intent), q.calls, q.errors, q.mean_ms,
        q.p50_ms, q.p95_ms, q.p99_ms, latencyBar(q, top)]);
    }
    document.body.dataset.loaded = "1";
  } catch (e) { document.getElementById("summary").textContent = "cannot reach the admin API: " + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""


@bp.get("/")
def page():
    return Response(PAGE, mimetype="text/html")
