// cmdb console charts: small SVG drawings built with DOM calls (no library, no inline
// markup). Colours come from classes styled in app.css.
'use strict';

(function () {
  const NS = 'http://www.w3.org/2000/svg';

  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(width, height, title) {
    const s = el('svg', { viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart', role: 'img' });
    if (title) {
      s.appendChild(el('title', {}, title));
      s.appendChild(el('text', { x: 10, y: 16, class: 'title' }, title));
    }
    return s;
  }

  // "Nice" tick values covering [lo, hi].
  function ticks(lo, hi, count) {
    if (!(hi > lo)) hi = lo + 1;
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    // From the step at or below lo to the first step at or above hi, so every value is inside.
    const out = [Math.floor(lo / step) * step];
    while (out[out.length - 1] < hi - step * 1e-9 && out.length < 50) {
      out.push(Math.round((out[out.length - 1] + step) / step) * step);
    }
    return out;
  }

  function fmtNum(v) {
    const a = Math.abs(v);
    if (a >= 1e12) return (v / 1e12).toFixed(1) + 'T';
    if (a >= 1e9) return (v / 1e9).toFixed(1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(0) + 'k';
    if (a >= 100 || v === Math.round(v)) return v.toFixed(0);
    return v.toFixed(1);
  }

  function fmtDate(ms, span) {
    const iso = new Date(ms).toISOString();
    if (span > 6 * 86400e3) return iso.slice(5, 10);
    if (span > 86400e3) return `${iso.slice(5, 10)} ${iso.slice(11, 13)}h`;
    return iso.slice(11, 16);
  }

  // A time-series line chart.
  // opts: {title, series: [{name, points: [[ms, value]], dashed}], threshold, unit, width, height}
  function line(opts) {
    const W = opts.width || 760, H = opts.height || 280;
    const m = { l: 56, r: 16, t: 36, b: 40 };
    const s = svg(W, H, opts.title);
    const all = opts.series.flatMap((x) => x.points);
    if (all.length === 0) {
      s.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data points'));
      return s;
    }
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    if (x1 === x0) x1 = x0 + 60e3;
    const ys = all.map((p) => p[1]);
    if (opts.threshold != null) ys.push(opts.threshold);
    const yt = ticks(Math.min(0, ...ys), Math.max(...ys) * 1.05 || 1, 5);
    const y0 = yt[0], y1 = yt[yt.length - 1];
    const px = (t) => m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r);
    const py = (v) => H - m.b - ((v - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
    for (const v of yt) {
      s.appendChild(el('line', { x1: m.l, x2: W - m.r, y1: py(v), y2: py(v), class: 'grid' }));
      s.appendChild(el('text', { x: m.l - 6, y: py(v) + 4, 'text-anchor': 'end' }, fmtNum(v)));
    }
    const n = 6;
    for (let i = 0; i <= n; i++) {
      const t = x0 + ((x1 - x0) * i) / n;
      const anchor = i === 0 ? 'start' : i === n ? 'end' : 'middle';
      s.appendChild(el('text', { x: px(t), y: H - m.b + 16, 'text-anchor': anchor }, fmtDate(t, x1 - x0)));
    }
    s.appendChild(el('line', { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: 'axis' }));
    s.appendChild(el('line', { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: 'axis' }));
    if (opts.unit) s.appendChild(el('text', { x: 10, y: H - 8 }, opts.unit));
    if (opts.threshold != null) {
      s.appendChild(el('line', { x1: m.l, x2: W - m.r, y1: py(opts.threshold), y2: py(opts.threshold), class: 'threshold' }));
      s.appendChild(el('text', { x: W - m.r - 4, y: py(opts.threshold) - 4, 'text-anchor': 'end' }, 'threshold ' + fmtNum(opts.threshold)));
    }
    opts.series.forEach((ser, i) => {
      if (ser.points.length === 0) return;
      const d = ser.points.map((p, j) => `${j ? 'L' : 'M'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ');
      s.appendChild(el('path', { d, class: 'series ' + (ser.dashed ? 'forecast' : 's' + i) }));
    });
    const legend = el('g', { class: 'legend' });
    let lx = W - m.r - 130 * opts.series.length;
    opts.series.forEach((ser, i) => {
      legend.appendChild(el('rect', { x: lx, y: 8, width: 10, height: 10, class: ser.dashed ? 'swatchf' : 'swatch' + i }));
      legend.appendChild(el('text', { x: lx + 14, y: 17 }, ser.name));
      lx += 130;
    });
    s.appendChild(legend);
    return s;
  }

  // Stacked bars, one per label. opts: {title, bars: [{label, values: [n, n, …]}], names: [..]}
  function bars(opts) {
    const W = opts.width || 760, H = opts.height || 220;
    const m = { l: 40, r: 12, t: 28, b: 40 };
    const s = svg(W, H, opts.title);
    if (opts.bars.length === 0) {
      s.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'nothing to draw'));
      return s;
    }
    const totals = opts.bars.map((b) => b.values.reduce((a, v) => a + v, 0));
    const yt = ticks(0, Math.max(4, ...totals), 4); // counts: whole-number ticks
    const top = yt[yt.length - 1];
    const py = (v) => H - m.b - (v / top) * (H - m.t - m.b);
    for (const v of yt) {
      s.appendChild(el('line', { x1: m.l, x2: W - m.r, y1: py(v), y2: py(v), class: 'grid' }));
      s.appendChild(el('text', { x: m.l - 6, y: py(v) + 4, 'text-anchor': 'end' }, fmtNum(v)));
    }
    const slot = (W - m.l - m.r) / opts.bars.length;
    const every = Math.ceil(opts.bars.length / 12);
    opts.bars.forEach((b, i) => {
      let acc = 0;
      b.values.forEach((v, k) => {
        if (v <= 0) return;
        const r = el('rect', { x: m.l + i * slot + slot * 0.15, width: slot * 0.7, y: py(acc + v), height: py(acc) - py(acc + v), class: 'b' + k });
        r.appendChild(el('title', {}, `${b.label}: ${v} ${(opts.names || [])[k] || ''}`));
        s.appendChild(r);
        acc += v;
      });
      if (i % every === 0) s.appendChild(el('text', { x: m.l + i * slot + slot / 2, y: H - m.b + 16, 'text-anchor': 'middle' }, b.label));
    });
    s.appendChild(el('line', { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: 'axis' }));
    const legend = el('g', { class: 'legend' });
    (opts.names || []).forEach((name, k) => {
      legend.appendChild(el('rect', { x: m.l + k * 140, y: H - 14, width: 10, height: 10, class: 'b' + k }));
      legend.appendChild(el('text', { x: m.l + k * 140 + 14, y: H - 5 }, name));
    });
    s.appendChild(legend);
    return s;
  }

  // Rows of intervals over a period. opts: {title, from, to (ms), rows: [{label, segments: [{start, end, cls, title}]}]}
  function timeline(opts) {
    const W = opts.width || 760, rowH = 22;
    const m = { l: 170, r: 12, t: 28, b: 28 };
    const H = m.t + m.b + Math.max(1, opts.rows.length) * rowH;
    const s = svg(W, H, opts.title);
    const span = opts.to - opts.from || 1;
    const px = (t) => m.l + ((Math.min(Math.max(t, opts.from), opts.to) - opts.from) / span) * (W - m.l - m.r);
    opts.rows.forEach((row, i) => {
      const y = m.t + i * rowH;
      s.appendChild(el('text', { x: m.l - 8, y: y + 15, 'text-anchor': 'end' }, row.label.length > 22 ? row.label.slice(0, 21) + '…' : row.label));
      s.appendChild(el('rect', { x: m.l, y: y + 4, width: W - m.l - m.r, height: rowH - 8, class: 'track' }));
      for (const seg of row.segments) {
        const x = px(seg.start);
        const r = el('rect', { x, y: y + 4, width: Math.max(2, px(seg.end) - x), height: rowH - 8, class: seg.cls });
        if (seg.title) r.appendChild(el('title', {}, seg.title));
        s.appendChild(r);
      }
    });
    for (let i = 0; i <= 6; i++) {
      const t = opts.from + (span * i) / 6;
      const anchor = i === 0 ? 'start' : i === 6 ? 'end' : 'middle';
      s.appendChild(el('text', { x: px(t), y: H - 10, 'text-anchor': anchor }, fmtDate(t, span)));
    }
    if (opts.now != null && opts.now > opts.from && opts.now < opts.to) {
      s.appendChild(el('line', { x1: px(opts.now), x2: px(opts.now), y1: m.t, y2: H - m.b, class: 'threshold' }));
      s.appendChild(el('text', { x: px(opts.now) + 3, y: m.t - 2 }, 'now'));
    }
    if (opts.rows.length === 0) {
      s.appendChild(el('text', { x: m.l + 8, y: m.t + 15 }, opts.empty || 'nothing in this period'));
    }
    return s;
  }

  window.Charts = { line, bars, timeline, fmtNum };
})();
