// The dashboard of truebit-federation serve: plain script, no build step. It reads /api/status
// (freshness and the last published snapshot), /api/stats (distributions of a period) and
// /api/history (time series), and refreshes every publish interval. Everything it loads comes
// from the serve that sent it.
'use strict';

(function () {
  const state = {
    range: '24h',
    interval: 30000,
    charts: {},
    world: null,
    lastOk: 0,
    rendered: 0,
    timer: null,
  };
  // Read by the browser test: what each chart drew.
  window.dashboard = { charts: {}, bars: {}, mapDots: 0, refreshes: 0, errors: [] };

  const $ = (sel) => document.querySelector(sel);
  const fmt = (n) => (n == null ? '–' : Number(n).toLocaleString('en-US'));
  const PERIOD_OF_RANGE = { '24h': '24h', '7d': '7d', '30d': 'all', all: 'all' };
  const COLORS = { tasks: '#4fb3ff', completed: '#3ccf91', failed: '#ff6b6b', cached: '#b38bff', invoices: '#f5b942', active: '#3ccf91', total: '#8b96a3' };

  async function getJson(url) {
    const r = await fetch(url, { cache: 'no-store' });
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).error || detail; } catch (_) { /* not JSON */ }
      throw new Error(url + ': ' + r.status + ' ' + detail);
    }
    return r.json();
  }

  function showError(message) {
    const el = $('#error');
    el.hidden = !message;
    el.textContent = message || '';
  }

  function renderStatus(s) {
    state.interval = Math.max(1000, s.publishIntervalMs || 30000);
    $('#interval').textContent = state.interval >= 60000 ? (state.interval / 60000) + ' min' : (state.interval / 1000) + ' s';
    const snap = s.snapshot;
    $('#snapshot-time').textContent = snap ? snap.timestamp.replace('T', ' ').replace(/:00\.000Z$/, ' UTC') : 'none yet';
    $('#last-seq').textContent = fmt(s.snapshotSeq);
    $('#lag').textContent = s.lag == null ? 'unknown' : fmt(s.lag) + (s.oldestUnfoldedAgeSeconds > 0 ? ' (oldest ' + Math.round(s.oldestUnfoldedAgeSeconds) + ' s)' : '');
    const stale = $('#stale');
    stale.hidden = !s.stale;
    stale.title = s.snapshotAgeSeconds == null ? 'no snapshot published yet'
      : 'the snapshot is ' + Math.round(s.snapshotAgeSeconds) + ' s old; one is published every ' + state.interval / 1000 + ' s';
    const nr = $('#notready');
    nr.hidden = s.ready;
    nr.textContent = s.ready ? '' : 'NOT READY';
    nr.title = s.notReady || '';
    if (snap) {
      for (const el of document.querySelectorAll('[data-field]')) {
        const v = snap.data[el.dataset.field];
        el.dataset.value = String(v);
        el.textContent = el.dataset.unit ? v.toFixed(1) + el.dataset.unit : fmt(v);
      }
    }
  }

  function chartWidth(el) {
    return Math.max(240, Math.floor(el.clientWidth || el.parentElement.clientWidth - 20));
  }

  // Points are drawn where a line would not show: a series with few values in view.
  function sparse(u, si, i0, i1) {
    const d = u.data[si];
    let n = 0;
    for (let i = i0; i <= i1 && n < 40; i++) if (d[i] != null && d[i] !== 0) n++;
    return n < 40;
  }

  function drawChart(id, series, data) {
    const el = document.getElementById(id);
    const nonNull = data.slice(1).reduce((n, col) => n + col.filter((v) => v != null).length, 0);
    window.dashboard.charts[id] = { points: data[0].length, values: nonNull };
    let chart = state.charts[id];
    if (!chart) {
      const opts = {
        width: chartWidth(el),
        height: 200,
        scales: { x: { time: true } },
        series: [{}].concat(series.map((s) => ({ label: s.label, stroke: s.color, width: 1.5, spanGaps: false, points: { show: sparse, size: 5, fill: s.color } }))),
        axes: [
          { stroke: '#8b96a3', grid: { stroke: '#27303a' }, ticks: { stroke: '#27303a' } },
          { stroke: '#8b96a3', grid: { stroke: '#27303a' }, ticks: { stroke: '#27303a' }, size: 50 },
        ],
        legend: { live: true },
      };
      chart = new uPlot(opts, data, el);
      state.charts[id] = chart;
    } else {
      chart.setData(data);
    }
  }

  function renderHistory(h) {
    const p = h.points;
    const t = p.map((x) => Date.parse(x.t) / 1000);
    const col = (k) => p.map((x) => (x[k] == null ? null : x[k]));
    drawChart('chart-tasks', [
      { label: 'first seen', color: COLORS.tasks },
      { label: 'completed', color: COLORS.completed },
      { label: 'failed', color: COLORS.failed },
      { label: 'cached', color: COLORS.cached },
    ], [t, col('tasks'), col('completed'), col('failed'), col('cached')]);
    drawChart('chart-invoices', [{ label: 'invoices', color: COLORS.invoices }], [t, col('invoices')]);
    drawChart('chart-nodes', [
      { label: 'active', color: COLORS.active },
      { label: 'seen', color: COLORS.total },
    ], [t, col('activeNodes'), col('totalNodes')]);
    const rate = (part, whole) => p.map((x) => {
      const w = whole(x);
      return w > 0 ? Math.round(1000 * part(x) / w) / 10 : null;
    });
    drawChart('chart-rates', [
      { label: 'success %', color: COLORS.completed },
      { label: 'cache hit %', color: COLORS.cached },
    ], [t, rate((x) => x.completed, (x) => x.completed + x.failed), rate((x) => x.cached, (x) => x.tasks)]);
    $('#range-note').textContent = p.length + ' points, one per ' + h.step + (h.range === 'all' && p.length ? ', from the first task' : '');
  }

  function renderBars(stats) {
    $('#dist-period').textContent = '(tasks and invoices first seen in ' + (stats.period === 'all' ? 'all time' : 'the last ' + stats.period) + ')';
    for (const el of document.querySelectorAll('[data-dist]')) {
      const dist = stats.data[el.dataset.dist] || {};
      const entries = Object.entries(dist);
      const max = entries.reduce((m, [, v]) => Math.max(m, v), 0);
      el.textContent = '';
      if (!entries.length) {
        const empty = document.createElement('div');
        empty.className = 'empty';
        empty.textContent = 'nothing reported in this period';
        el.appendChild(empty);
      }
      for (const [k, v] of entries) {
        const row = document.createElement('div');
        row.className = 'bar-row';
        const key = document.createElement('span');
        key.className = 'k';
        key.textContent = k;
        key.title = k;
        const track = document.createElement('span');
        track.className = 'track';
        const bar = document.createElement('span');
        bar.className = 'bar';
        bar.style.display = 'block';
        bar.style.width = (max > 0 ? (100 * v) / max : 0) + '%';
        track.appendChild(bar);
        const val = document.createElement('span');
        val.className = 'v';
        val.textContent = fmt(v);
        row.append(key, track, val);
        el.appendChild(row);
      }
      window.dashboard.bars[el.dataset.dist] = { bars: entries.length, total: entries.reduce((s, [, v]) => s + v, 0) };
    }
    renderMap(stats.data.locationDistribution || {});
  }

  // Equirectangular, the whole globe: a node may report any location bucket.
  const NORTH = 90, SOUTH = -90;
  function renderMap(locations) {
    const canvas = $('#map');
    const w = canvas.width;
    const h = Math.round((w * (NORTH - SOUTH)) / 360);
    if (canvas.height !== h) canvas.height = h;
    const ctx = canvas.getContext('2d');
    const x = (lon) => ((lon + 180) / 360) * w;
    const y = (lat) => ((NORTH - lat) / (NORTH - SOUTH)) * h;
    ctx.fillStyle = '#171d24';
    ctx.fillRect(0, 0, w, h);
    ctx.fillStyle = '#2a3440';
    for (const ring of state.world || []) {
      ctx.beginPath();
      for (let i = 0; i < ring.length; i += 2) {
        const px = x(ring[i] / 10), py = y(ring[i + 1] / 10);
        // A ring that crosses the antimeridian jumps across the map: start a new piece there.
        const jump = i > 0 && Math.abs(ring[i] - ring[i - 2]) > 1800;
        if (i === 0 || jump) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      }
      ctx.closePath();
      ctx.fill();
    }
    let dots = 0;
    const entries = Object.entries(locations);
    const max = entries.reduce((m, [, v]) => Math.max(m, v), 1);
    for (const [key, count] of entries) {
      const [lat, lon] = key.split(',').map(Number);
      if (!Number.isFinite(lat) || !Number.isFinite(lon)) continue;
      const r = 3 + 9 * Math.sqrt(count / max);
      ctx.beginPath();
      ctx.arc(x(lon), y(lat), r, 0, 2 * Math.PI);
      ctx.fillStyle = 'rgba(79, 179, 255, 0.55)';
      ctx.fill();
      ctx.strokeStyle = '#4fb3ff';
      ctx.stroke();
      dots++;
    }
    window.dashboard.mapDots = dots;
  }

  async function refresh() {
    try {
      const [status, stats, history] = await Promise.all([
        getJson('/api/status'),
        getJson('/api/stats?period=' + PERIOD_OF_RANGE[state.range]),
        getJson('/api/history?range=' + state.range),
      ]);
      renderStatus(status);
      renderBars(stats);
      renderHistory(history);
      state.lastOk = Date.now();
      showError('');
      window.dashboard.refreshes++;
      document.body.dataset.ready = '1';
      document.body.dataset.renderedAt = String(Date.now());
    } catch (e) {
      window.dashboard.errors.push(String(e));
      // The numbers on screen are the last ones that came: say so.
      $('#stale').hidden = false;
      showError('cannot refresh: ' + e.message + (state.lastOk ? ' (figures from ' + new Date(state.lastOk).toLocaleTimeString() + ')' : ''));
    }
    clearTimeout(state.timer);
    state.timer = setTimeout(refresh, state.interval);
  }

  function resize() {
    for (const [id, chart] of Object.entries(state.charts)) {
      chart.setSize({ width: chartWidth(document.getElementById(id)), height: 200 });
    }
  }

  document.querySelectorAll('[data-range]').forEach((b) => b.addEventListener('click', () => {
    state.range = b.dataset.range;
    document.querySelectorAll('[data-range]').forEach((o) => o.classList.toggle('on', o === b));
    refresh();
  }));
  let resizing = null;
  window.addEventListener('resize', () => { clearTimeout(resizing); resizing = setTimeout(resize, 100); });

  getJson('/assets/vendor/world/world.json')
    .then((rings) => { state.world = rings; })
    .catch((e) => window.dashboard.errors.push('map: ' + e))
    .finally(refresh);
})();
