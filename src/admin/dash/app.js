// moat dashboard: one EventSource (/events): a "history" event with the last 15 minutes, then
// one snapshot a second. Everything is drawn here; nothing is fetched from anywhere else.
'use strict';
(function () {
  const CLASSES = ['hit', 'miss', 'pass', 'stale', 'error'];
  const HISTORY = 900;
  const $ = (id) => document.getElementById(id);
  let points = []; // [t, req x5, bytes x5]

  const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
  function fmtSI(n, unit) {
    if (n == null) return '–';
    const u = ['', 'k', 'M', 'G', 'T'];
    let i = 0;
    while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : Math.round(n).toString()) + ' ' + u[i] + unit;
  }
  function fmtBytes(n) {
    if (n == null) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i && n < 100 ? n.toFixed(1) : Math.round(n).toString()) + ' ' + u[i];
  }
  const fmtPct = (x) => (x == null ? '–' : (100 * x).toFixed(1) + '%');
  const fmtMs = (x) => (x == null ? '–' : x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : Math.round(x).toString());
  function fmtDur(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    const p2 = (x) => String(x).padStart(2, '0');
    return (d ? d + 'd ' : '') + p2(h) + ':' + p2(m) + ':' + p2(s % 60);
  }
  function setText(id, v) { const e = $(id); if (e && e.textContent !== v) e.textContent = v; }

  // --- legends -----------------------------------------------------------------------------
  function legend(id) {
    const ul = $(id);
    CLASSES.forEach((c) => {
      const li = document.createElement('li');
      const sw = document.createElement('i');
      sw.className = 'sw-' + c;
      const name = document.createElement('span');
      name.textContent = c;
      const val = document.createElement('b');
      val.id = id + '-' + c;
      val.textContent = '–';
      li.append(sw, name, val);
      ul.append(li);
    });
  }
  legend('lg-rps');
  legend('lg-bw');

  // --- charts: stacked areas on a canvas -----------------------------------------------------
  function colors() {
    const cs = getComputedStyle(document.documentElement);
    const o = {};
    CLASSES.concat(['fg', 'muted', 'line']).forEach((k) => { o[k] = cs.getPropertyValue('--' + k).trim(); });
    return o;
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function draw(canvasId, offset, fmt) {
    const cv = $(canvasId);
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth, h = cv.clientHeight;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const g = cv.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const col = colors();
    const left = 76, right = 8, top = 6, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    const now = points.length ? points[points.length - 1][0] : Math.floor(Date.now() / 1000);
    const t0 = now - HISTORY + 1;
    let max = 0;
    for (const p of points) {
      let s = 0;
      for (let k = 0; k < 5; k++) s += p[offset + k];
      if (s > max) max = s;
    }
    max = niceMax(max);
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = col.muted;
    g.strokeStyle = col.line;
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(left, Math.round(y) + 0.5); g.lineTo(left + pw, Math.round(y) + 0.5); g.stroke();
      g.fillText(fmt((max * i) / 4), left - 6, y);
    }
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (let m = 0; m <= 15; m += 5) {
      const x = left + pw - (pw * m * 60) / HISTORY;
      g.fillText(m ? '-' + m + 'm' : 'now', Math.min(Math.max(x, left + 12), left + pw - 12), top + ph + 4);
    }
    if (!points.length) return;
    const xs = (t) => left + ((t - t0) / (HISTORY - 1)) * pw;
    const base = new Float64Array(points.length);
    for (let k = 0; k < 5; k++) {
      g.beginPath();
      const top_ = [];
      for (let i = 0; i < points.length; i++) {
        const y = base[i] + points[i][offset + k];
        top_.push(y);
      }
      for (let i = 0; i < points.length; i++) {
        const x = xs(points[i][0]), y = top + ph - (top_[i] / max) * ph;
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
      }
      for (let i = points.length - 1; i >= 0; i--) {
        g.lineTo(xs(points[i][0]), top + ph - (base[i] / max) * ph);
      }
      g.closePath();
      g.fillStyle = col[CLASSES[k]];
      g.globalAlpha = 0.75;
      g.fill();
      g.globalAlpha = 1;
      for (let i = 0; i < points.length; i++) base[i] = top_[i];
    }
  }
  function redraw() {
    draw('c-rps', 1, (v) => fmtSI(v, ''));
    draw('c-bw', 6, (v) => fmtBytes(v) + '/s');
  }
  window.addEventListener('resize', redraw);
  if (window.matchMedia) {
    const mq = window.matchMedia('(prefers-color-scheme: dark)');
    if (mq.addEventListener) mq.addEventListener('change', redraw);
  }

  // --- panels --------------------------------------------------------------------------------
  function fillRows(tbodyId, rows, cols) {
    const tb = $(tbodyId);
    while (tb.rows.length < rows.length) {
      const tr = tb.insertRow();
      for (let i = 0; i < cols; i++) tr.insertCell();
    }
    while (tb.rows.length > rows.length) tb.deleteRow(-1);
    rows.forEach((r, i) => {
      const tr = tb.rows[i];
      r.forEach((v, j) => {
        if (tr.cells[j].textContent !== v) tr.cells[j].textContent = v;
        if (j === 0) tr.cells[j].title = v;
      });
    });
  }
  function topTable(id, t) {
    const rows = (t && t.top) || [];
    const total = (t && t.total) || 0;
    const out = rows.map((e) => [e.key, fmtInt(e.count), total ? fmtPct(e.count / total) : '–']);
    if (!out.length) out.push(['no traffic in the last minute', '', '']);
    fillRows(id, out, 3);
    const tb = $(id);
    for (const tr of tb.rows) tr.cells[2].className = 'share';
  }

  function update(s) {
    setText('f-version', s.version);
    setText('f-gen', String(s.generation));
    setText('f-uptime', fmtDur(s.uptime));
    setText('f-workers', String(s.workers));
    setText('f-conns', fmtInt(s.connections));
    const rl = s.reload || {};
    let rtext = rl.last ? rl.last + ' (' + new Date(rl.at * 1000).toLocaleTimeString() + ')' : 'none since start';
    setText('f-reload', rtext);
    $('f-reload').title = rl.message || '';
    if (s.point) {
      if (!points.length || points[points.length - 1][0] < s.point[0]) points.push(s.point);
      while (points.length && points[0][0] <= s.point[0] - HISTORY) points.shift();
      CLASSES.forEach((c, k) => {
        setText('lg-rps-' + c, fmtInt(s.point[1 + k]));
        setText('lg-bw-' + c, fmtBytes(s.point[6 + k]));
      });
    }
    redraw();
    setText('ratio-req', fmtPct(s.hit_ratio.requests));
    setText('ratio-bytes', fmtPct(s.hit_ratio.bytes));
    fillRows('totals', CLASSES.map((c) => [c, fmtInt(s.total.req[c]), fmtBytes(s.total.bytes[c])]), 3);
    const tb = $('totals');
    CLASSES.forEach((c, i) => { tb.rows[i].cells[1].id = 'total-' + c; });
    if (s.cache) {
      const c = s.cache;
      setText('c-mem', fmtBytes(c.bytes) + ' of ' + fmtBytes(c.limit));
      $('mem-bar').style.width = (c.limit ? Math.min(100, (100 * c.bytes) / c.limit) : 0).toFixed(1) + '%';
      setText('c-objects', fmtInt(c.objects));
      setText('c-evict', fmtInt(c.evictions));
      setText('c-evict-now', fmtInt(c.evictions_now));
    } else {
      setText('c-mem', 'cache off');
    }
    for (const k of ['hit', 'origin']) {
      const l = s.latency[k];
      setText('l-' + k + '-p50', fmtMs(l.p50));
      setText('l-' + k + '-p90', fmtMs(l.p90));
      setText('l-' + k + '-p99', fmtMs(l.p99));
      setText('l-' + k + '-n', fmtInt(l.n));
    }
    fillRows('status', ['1xx', '2xx', '3xx', '4xx', '5xx'].map((c) =>
      [c, fmtInt(s.status.now[c]) + '/s', fmtInt(s.status.total[c])]), 3);
    for (const tr of $('status').rows) tr.cells[0].setAttribute('scope', 'row');
    topTable('top-urls', s.top.urls);
    topTable('top-hosts', s.top.hosts);
    topTable('top-clients', s.top.clients);
    // certificates: names, days left, state (ACME: valid / renewing / pending / failing + why)
    const certs = (s.certs || []).map((c) => [c.names,
      c.days_left === null ? '–' : Math.floor(c.days_left) + ' d',
      c.source === 'acme' ? 'acme ' + c.state + (c.error ? ': ' + c.error : '') : c.state]);
    if (!certs.length) certs.push(['no TLS certificates', '', '']);
    fillRows('certs', certs, 3);
    for (const tr of $('certs').rows) tr.cells[2].title = tr.cells[2].textContent;
    document.body.dataset.snapshots = String(s.snapshots);
  }

  // --- the stream ----------------------------------------------------------------------------
  const live = $('live');
  let es = null;
  function connect() {
    es = new EventSource('/events');
    es.addEventListener('history', (ev) => {
      const h = JSON.parse(ev.data);
      points = h.points.slice(-HISTORY);
      redraw();
    });
    es.onmessage = (ev) => {
      live.textContent = 'live';
      live.className = 'live ok';
      update(JSON.parse(ev.data));
    };
    es.onerror = () => {
      live.textContent = 'reconnecting…';
      live.className = 'live down';
      // A restart logs everybody out: back to the login form when the cookie no longer
      // works. A refusal (too many dashboards open) closes the stream for good: try again
      // a little later.
      fetch('/status', { credentials: 'same-origin' }).then((r) => {
        if (r.status === 401) location.href = '/dashboard';
      }, () => {});
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    };
  }
  connect();

  // --- actions -------------------------------------------------------------------------------
  async function call(path, body) {
    const r = await fetch(path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-Moat-Dashboard': '1' },
      body: body ? JSON.stringify(body) : '{}',
    });
    let j = {};
    try { j = await r.json(); } catch (e) { j = { error: 'HTTP ' + r.status }; }
    return { ok: r.ok, j };
  }
  function result(id, ok, text) {
    const e = $(id);
    e.textContent = text;
    e.className = 'result' + (ok ? '' : ' err');
  }
  $('purge').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const kind = $('purge-kind').value, arg = $('purge-arg').value.trim();
    const body = { [kind]: arg };
    if ($('purge-soft').checked) body.soft = true;
    $('purge-go').disabled = true;
    try {
      const { ok, j } = await call('/purge', body);
      result('purge-result', ok, ok ? 'purged ' + j.purged + (j.soft ? ' (soft)' : '') : j.error);
    } catch (e) {
      result('purge-result', false, 'the admin API did not answer');
    }
    $('purge-go').disabled = false;
  });
  $('reload-go').addEventListener('click', async () => {
    $('reload-go').disabled = true;
    try {
      const { ok, j } = await call('/reload');
      result('reload-result', ok, ok ? 'reloaded: generation ' + j.generation : j.error);
    } catch (e) {
      result('reload-result', false, 'the admin API did not answer');
    }
    $('reload-go').disabled = false;
  });
})();
