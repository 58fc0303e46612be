// cmdb console: a single page over the collector's /api/v1, no framework, no build step.
// Every value from the API enters the page as text (textContent / text nodes), never as
// markup. The token lives in sessionStorage (this tab only) and goes out as a Bearer header.
// Hiding buttons a role may not use is a convenience: the API checks every write itself.
'use strict';

const TOKEN_KEY = 'cmdb.token';
const WRITERS = ['operator', 'change-manager', 'admin'];
const MANAGERS = ['change-manager', 'admin'];
const AUDITORS = ['auditor', 'admin'];
const DEFICIENCY_MOVERS = ['auditor', 'admin', 'operator'];
const CLASSES = ['host', 'system', 'os', 'cpu', 'memory', 'memory_module', 'disk', 'filesystem',
  'network_interface', 'package', 'service', 'listening_port', 'connection', 'user', 'group',
  'kernel_module', 'file', 'process', 'monitor'];
const DAY = 86400e3;

let me = null; // {name, role} of the token, from /api/v1/whoami
let renderSeq = 0;
let hostCache = { at: 0, names: new Map() };

// === DOM ===

function h(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  add(e, kids);
  return e;
}

function add(e, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

const link = (href, text) => h('a', { href }, text);
const badge = (text, cls) => h('span', { class: 'badge ' + (cls || String(text).replace(/[^a-z_]/gi, '_')) }, text);
const enc = encodeURIComponent;

function table(cols, rows, empty) {
  if (!rows || rows.length === 0) return h('p', { class: 'empty' }, empty || 'Nothing to show.');
  return h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.num ? 'num' : null }, c.t)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, cols.map((c) => h('td', { class: c.num ? 'num' : null }, c.v(r)))))));
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter((p) => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v == null || v === '' ? '—' : v)]));
}

function stat(n, label, cls) {
  return h('div', { class: 'stat ' + (cls || '') }, h('div', { class: 'n' }, n), h('div', { class: 'l' }, label));
}

function errorBox(e) {
  const msg = typeof e === 'string' ? e : e.status ? `${e.message} (HTTP ${e.status})` : String(e.message || e);
  return h('div', { class: 'error', role: 'alert' }, msg);
}

function notAvailable(what) {
  return h('div', { class: 'notice', id: 'not-available' },
    `${what} is not available on this collector: its API does not serve it yet (HTTP 404).`);
}

function pctBar(p) {
  const v = Math.max(0, Math.min(100, Number(p) || 0));
  const bar = h('span', { class: 'bar' + (v < 99 ? ' low' : '') }, h('span'));
  bar.firstChild.style.width = v + '%'; // CSSOM, allowed by the style-src policy
  return bar;
}

// === formatting ===

function fmtTime(iso) {
  return iso ? String(iso).replace('T', ' ').replace(/(\.\d+)?Z$/, ' UTC') : '—';
}

function ago(iso) {
  if (!iso) return 'never';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.max(0, s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function fmtDur(sec) {
  if (sec == null) return '—';
  sec = Math.round(sec);
  if (sec < 120) return `${sec} s`;
  if (sec < 7200) return `${Math.round(sec / 60)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} d`;
}

function fmtBytes(n) {
  if (n == null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

function fmtVal(v) {
  if (v === null || v === undefined) return 'null';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

const fmtNum = (v) => (v == null ? '—' : typeof v === 'number' ? Charts.fmtNum(v) : String(v));

// === API ===

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

// A route the collector does not serve (another version): degrade, do not fail.
const isMissing = (e) => e instanceof ApiError && (e.status === 404 || e.status === 405);

async function api(path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + (sessionStorage.getItem(TOKEN_KEY) || '') };
  let body;
  if (opts.raw !== undefined) {
    headers['Content-Type'] = opts.contentType || 'text/csv';
    body = opts.raw;
  } else if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  let resp;
  try {
    resp = await fetch(path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network', 'the collector cannot be reached');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!resp.ok) {
    const err = (data && data.error) || { code: 'http', message: `HTTP ${resp.status}` };
    if (resp.status === 401 && !opts.login) logout('Your token is no longer accepted: log in again.');
    throw new ApiError(resp.status, err.code, err.message);
  }
  return data;
}

// Tries a route that may not exist on this collector; `null` when it does not.
async function optional(path) {
  try { return await api(path); } catch (e) { if (isMissing(e)) return null; throw e; }
}

async function hostNames() {
  if (Date.now() - hostCache.at > 30e3) {
    const names = new Map();
    for (const a of (await api('/api/v1/agents')).items) if (a.host_id) names.set(a.host_id, a.hostname || a.host_id);
    hostCache = { at: Date.now(), names };
  }
  return hostCache.names;
}

const can = (roles) => me && roles.includes(me.role);

// Runs a mutation from a button, then redraws the page (or shows why it failed).
function action(label, fn, props) {
  const status = h('span');
  const b = h('button', Object.assign({ type: 'button' }, props || {}), label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await fn(); render(); } catch (e) { b.disabled = false; status.replaceChildren(errorBox(e)); }
  });
  return h('span', {}, b, status);
}

// === shell: login, navigation, routing ===

function showChrome(on) {
  document.getElementById('nav').hidden = !on;
  document.getElementById('who').hidden = !on;
  if (on) {
    document.getElementById('who-name').textContent = me.name;
    const role = document.getElementById('who-role');
    role.textContent = me.role;
    role.className = 'badge role';
  }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  renderSeq++;
  showLogin(message);
}

function showLogin(message) {
  showChrome(false);
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', required: true });
  const err = h('div', {}, message ? h('p', { class: 'muted' }, message) : null);
  const form = h('form', { class: 'card login', id: 'login-form' },
    h('h1', {}, 'Log in to the cmdb console'),
    h('label', {}, 'API token', input),
    h('p', { class: 'muted' }, 'Create one with ', h('code', {}, 'cmdb-collector api-token create'),
      '. It is kept for this browser tab only.'),
    err,
    h('button', { type: 'submit', id: 'login' }, 'Log in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      me = await api('/api/v1/whoami', { login: true });
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      me = null;
      input.value = '';
      err.replaceChildren(errorBox(e.status === 401 ? 'That token is not valid.' : e));
      return;
    }
    if (!location.hash || location.hash === '#/') location.hash = '#/fleet';
    else render();
  });
  document.getElementById('view').replaceChildren(form);
  input.focus();
}

async function render() {
  const view = document.getElementById('view');
  const seq = ++renderSeq;
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin();
  if (!me) {
    try { me = await api('/api/v1/whoami'); } catch (e) { if (e.status !== 401) view.replaceChildren(errorBox(e)); return; }
  }
  showChrome(true);
  const [path, qs] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/');
  const page = Object.hasOwn(PAGES, name) ? name : 'fleet';
  let arg = rest.length ? rest.join('/') : null;
  try { arg = arg && decodeURIComponent(arg); } catch (_) { /* a malformed escape: use it as typed */ }
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === page || a.dataset.page === PARENT[page]);
  }
  const out = h('div', { id: 'page-' + page });
  view.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    await PAGES[page](out, arg, new URLSearchParams(qs || ''));
  } catch (e) {
    out.appendChild(errorBox(e));
  }
  if (seq === renderSeq) view.replaceChildren(out);
}

// Filter forms put their values into the hash, so every view is a link.
function filterForm(page, fields) {
  const form = h('form', { class: 'filters' }, fields.map((f) => h('label', {}, f.label, f.input)),
    h('button', { type: 'submit' }, 'Apply'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const f of fields) {
      const v = f.input.type === 'checkbox' ? (f.input.checked ? 'true' : '') : f.input.value.trim();
      if (v) p.set(f.input.name, v);
    }
    location.hash = `#/${page}?${p}`;
  });
  return form;
}

const input = (name, params, extra) => h('input', Object.assign({ name, value: params.get(name) || '' }, extra || {}));

function select(name, params, choices, anyLabel) {
  const cur = params.get(name) || '';
  return h('select', { name }, h('option', { value: '' }, anyLabel || 'any'),
    choices.map((c) => h('option', { value: c, selected: c === cur }, c)));
}

// === pages ===

async function fleet(out) {
  out.appendChild(h('h1', {}, 'Fleet overview'));
  let data = await optional('/api/v1/fleet');
  if (!data) {
    const agents = (await api('/api/v1/agents')).items;
    const items = agents.map((a) => ({
      agent_id: a.agent_id, host_id: a.host_id, hostname: a.hostname, version: a.version,
      last_seen: a.last_seen, up: !!a.connected && !a.revoked, outbox_events: a.outbox_events,
      outbox_bytes: a.outbox_bytes, collectors: a.collectors || [],
      failures: (a.collectors || []).filter((c) => c.status !== 'ok' && c.status !== 'unsupported').length,
    }));
    const versions = {};
    for (const a of items) versions[a.version] = (versions[a.version] || 0) + 1;
    const up = items.filter((a) => a.up).length;
    data = { summary: { agents: items.length, up, down: items.length - up, versions }, items };
  }
  const s = data.summary || {};
  const versions = Object.entries(s.versions || {}).map(([v, n]) => `${v} × ${n}`).join(', ');
  out.appendChild(h('div', { class: 'cards' },
    stat(s.agents ?? 0, 'agents'), stat(s.up ?? 0, 'up', 'ok'), stat(s.down ?? 0, 'down', s.down ? 'bad' : ''),
    stat(versions || '—', 'agent versions')));
  out.appendChild(table([
    { t: 'Host', v: (a) => (a.host_id ? link('#/host/' + enc(a.host_id), a.hostname || a.host_id) : a.hostname || '—') },
    { t: 'Status', v: (a) => badge(a.up ? 'up' : 'down') },
    { t: 'Version', v: (a) => a.version },
    { t: 'Last seen', v: (a) => h('span', { title: fmtTime(a.last_seen) }, ago(a.last_seen)) },
    { t: 'Backlog', num: true, v: (a) => `${a.outbox_events ?? 0} events / ${fmtBytes(a.outbox_bytes ?? 0)}` },
    { t: 'Collector problems', v: (a) => (a.collectors || []).filter((c) => c.status !== 'ok' && c.status !== 'unsupported')
      .map((c) => h('div', {}, badge(c.status, 'warn'), ' ', c.name, c.message ? ': ' + c.message : '')) },
    { t: 'Agent', v: (a) => h('span', { class: 'mono' }, a.agent_id) },
    { t: '', v: (a) => (a.host_id ? link('#/cis?host=' + enc(a.host_id), 'CIs') : '') },
  ], data.items, 'No agent has enrolled yet. Enroll one with cmdb-agent enroll.'));
}

// `#/host/<host id>`: the host's own CI page.
async function host(out, hostId) {
  const found = await api(`/api/v1/cis?class=host&host=${enc(hostId)}&limit=1`);
  if (!found.items.length) {
    out.appendChild(h('h1', {}, hostId));
    out.appendChild(h('p', { class: 'empty' }, 'This host has no CI yet.'));
    return;
  }
  history.replaceState(null, '', '#/ci/' + enc(found.items[0].id));
  return ci(out, found.items[0].id);
}

async function cis(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Configuration items'));
  out.appendChild(filterForm('cis', [
    { label: 'Search', input: input('q', params, { placeholder: 'key or attribute text', id: 'ci-search' }) },
    { label: 'Class', input: select('class', params, CLASSES, 'any class') },
    { label: 'Host', input: input('host', params, { placeholder: 'hostname or host id' }) },
    { label: 'Absent too', input: h('input', { type: 'checkbox', name: 'include_absent', checked: params.get('include_absent') === 'true' }) },
  ]));
  const q = new URLSearchParams();
  for (const k of ['q', 'class', 'host', 'include_absent', 'after']) if (params.get(k)) q.set(k, params.get(k));
  q.set('limit', '100');
  const [page, names] = await Promise.all([api('/api/v1/cis?' + q), hostNames()]);
  out.appendChild(table([
    { t: 'Class', v: (c) => c.class },
    { t: 'Key', v: (c) => link('#/ci/' + enc(c.id), c.key) },
    { t: 'Host', v: (c) => names.get(c.host_id) || c.host_id },
    { t: 'State', v: (c) => badge(c.state, c.state === 'present' ? 'ok' : 'warn') },
    { t: 'Version', num: true, v: (c) => c.version },
    { t: 'Last changed', v: (c) => fmtTime(c.last_changed) },
  ], page.items, 'No CI matches.'));
  if (page.next_after) {
    const next = new URLSearchParams(params);
    next.set('after', page.next_after);
    out.appendChild(h('p', {}, link('#/cis?' + next, 'Next page →')));
  }
}

// The lines of one version's diff: + added, - removed, ~ changed.
function versionDiff(v) {
  const lines = [];
  const keys = new Set([...Object.keys(v.old_attrs || {}), ...Object.keys(v.attrs || {})]);
  for (const k of [...keys].sort()) {
    const had = v.old_attrs && k in v.old_attrs, has = v.attrs && k in v.attrs;
    if (v.change === 'added' || (!had && has)) lines.push(['add', `+ ${k} = ${fmtVal(v.attrs[k])}`]);
    else if (had && !has) lines.push(['del', `- ${k} (was ${fmtVal(v.old_attrs[k])})`]);
    else if (JSON.stringify(v.old_attrs[k]) !== JSON.stringify(v.attrs[k])) {
      lines.push(['chg', `~ ${k}: ${fmtVal(v.old_attrs[k])} → ${fmtVal(v.attrs[k])}`]);
    }
  }
  const shown = lines.slice(0, 40).map(([cls, text]) => h('li', { class: cls }, text));
  if (lines.length > 40) shown.push(h('li', { class: 'muted' }, `… ${lines.length - 40} more`));
  return h('ul', { class: 'diff' }, shown);
}

async function ci(out, id) {
  const [c, names] = await Promise.all([api('/api/v1/cis/' + enc(id)), hostNames()]);
  out.appendChild(h('h1', {}, `${c.class} ${c.key}`));
  out.appendChild(h('div', { class: 'card' }, kv([
    ['Id', h('span', { class: 'mono' }, c.id)],
    ['Class', c.class], ['Key', c.key],
    ['Host', link('#/host/' + enc(c.host_id), names.get(c.host_id) || c.host_id)],
    ['State', badge(c.state, c.state === 'present' ? 'ok' : 'warn')],
    ['Version', c.version],
    ['First seen', fmtTime(c.first_seen)], ['Last seen', fmtTime(c.last_seen)],
    ['Last changed', fmtTime(c.last_changed)],
    ['Source', `${c.source_agent || '—'} seq ${c.source_seq ?? '—'}`],
  ])));
  if (c.class === 'host') {
    out.appendChild(h('p', { id: 'host-classes' }, 'CIs on this host: ', CLASSES.filter((k) => k !== 'host')
      .map((k) => [link(`#/cis?host=${enc(c.host_id)}&class=${k}`, k), ' '])));
  }
  const attrs = Object.entries(c.attrs || {}).sort(([a], [b]) => a.localeCompare(b));
  const versions = (c.versions || []).slice().reverse();
  out.appendChild(h('div', { class: 'grid2' },
    h('section', {}, h('h2', {}, 'Attributes'),
      table([{ t: 'Name', v: (r) => r[0] }, { t: 'Value', v: (r) => h('span', { class: 'mono' }, fmtVal(r[1])) }], attrs, 'No attributes.')),
    h('section', {}, h('h2', {}, `Version history (${versions.length})`),
      versions.length ? h('ol', { class: 'timeline', id: 'versions' }, versions.slice(0, 100).map((v) => h('li', {},
        h('div', {}, h('strong', {}, `v${v.version} `), badge(v.change, v.change === 'added' ? 'ok' : v.change === 'changed' ? 'warn' : 'bad'),
          ' ', h('span', { class: 'when' }, fmtTime(v.observed_at)),
          v.change_id ? [' authorised by ', link('#/changes', v.change_id)] : null),
        h('div', { class: 'muted' }, `agent ${v.agent_id || '—'} seq ${v.seq ?? '—'}`),
        versionDiff(v)))) : h('p', { class: 'empty' }, 'No versions.'))));

  out.appendChild(h('h2', {}, 'Relations'));
  const rel = await api(`/api/v1/cis/${enc(id)}/relations`);
  out.appendChild(table([
    { t: 'Direction', v: (r) => r.direction },
    { t: 'Kind', v: (r) => r.kind },
    { t: 'Other CI', v: (r) => (r.other ? link('#/ci/' + enc(r.other.id), `${r.other.class} ${r.other.key}`) : (r.direction === 'outgoing' ? r.to : r.from)) },
    { t: 'Present', v: (r) => (r.present ? 'yes' : 'no') },
    { t: 'Source', v: (r) => (r.derived ? 'derived from connections' : 'agent') },
  ], rel.items, 'No relations.'));

  out.appendChild(h('h2', {}, 'Impact'));
  const impact = await optional(`/api/v1/cis/${enc(id)}/impact?depth=3`);
  if (!impact) out.appendChild(notAvailable('Impact analysis'));
  else {
    out.appendChild(table([
      { t: 'Direction', v: (n) => n.direction },
      { t: 'Hops', num: true, v: (n) => n.hops },
      { t: 'CI', v: (n) => link('#/ci/' + enc(n.id), `${n.class} ${n.key}`) },
      { t: 'Via', v: (n) => n.via || '—' },
      { t: 'Host', v: (n) => n.hostname || n.host_id },
    ], (impact.nodes || []).filter((n) => n.id !== impact.root), 'Nothing depends on this CI, and it depends on nothing.'));
    if (impact.truncated) out.appendChild(h('p', { class: 'notice' }, 'The impact set is larger than shown: the answer was truncated (cmdbctl impact lists it with --format csv).'));
  }

  out.appendChild(h('h2', {}, 'Drift'));
  const drift = await optional(`/api/v1/drift?ci=${enc(id)}&limit=100`);
  if (drift) out.appendChild(driftTable(drift.items.slice().reverse(), names));
}

function driftTable(items, names) {
  return table([
    { t: 'Observed', v: (d) => fmtTime(d.observed_at) },
    { t: 'Host', v: (d) => d.hostname || names.get(d.host_id) || d.host_id },
    { t: 'CI', v: (d) => link('#/ci/' + enc(d.ci_id), `${d.class} ${d.key}`) },
    { t: 'Kind', v: (d) => d.kind },
    { t: 'Attributes', v: (d) => (d.changes || []).map((c) => c.name).join(', ') },
    { t: 'Verdict', v: (d) => badge(d.verdict) },
    { t: 'By', v: (d) => (d.change_id ? link('#/changes', d.change_id) : d.waiver_id || (d.incident ? link('#/incident/' + enc(d.incident), d.incident) : '—')) },
    { t: 'Status', v: (d) => (d.open ? badge('open', 'bad') : d.resolution || '—') },
  ], items, 'No drift recorded.');
}

const INCIDENT_STATES = ['new', 'acknowledged', 'in_progress', 'resolved', 'closed'];
const CATEGORIES = ['availability', 'capacity', 'unauthorized-change', 'security', 'identity'];

async function incidents(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Incidents'));
  out.appendChild(filterForm('incidents', [
    { label: 'State', input: select('state', params, INCIDENT_STATES) },
    { label: 'Open', input: select('open', params, ['true', 'false']) },
    { label: 'Category', input: select('category', params, CATEGORIES) },
    { label: 'Host', input: input('host', params, { placeholder: 'hostname or host id' }) },
  ]));
  const q = new URLSearchParams();
  for (const k of ['state', 'open', 'category', 'host']) if (params.get(k)) q.set(k, params.get(k));
  q.set('limit', '200');
  const list = await api('/api/v1/incidents?' + q);
  out.appendChild(table([
    { t: 'Number', v: (i) => link('#/incident/' + enc(i.number), i.number) },
    { t: 'Priority', num: true, v: (i) => `P${i.priority}` },
    { t: 'State', v: (i) => badge(i.state) },
    { t: 'Category', v: (i) => i.category },
    { t: 'Host', v: (i) => i.hostname || i.host_id || '—' },
    { t: 'Title', v: (i) => i.title },
    { t: 'Started', v: (i) => fmtTime(i.started_at) },
    { t: 'Assignee', v: (i) => i.assignee || '—' },
  ], list.items, 'No incident matches.'));
}

async function incident(out, number) {
  const i = await api('/api/v1/incidents/' + enc(number));
  const act = (body) => api(`/api/v1/incidents/${enc(number)}/actions`, { method: 'POST', body });
  out.appendChild(h('h1', {}, `${i.number}: ${i.title}`));
  out.appendChild(h('div', { class: 'card' }, kv([
    ['State', badge(i.state)],
    ['Priority', `P${i.priority} (impact ${i.impact}, urgency ${i.urgency})`],
    ['Category', i.category],
    ['CI', i.ci_id ? link('#/ci/' + enc(i.ci_id), i.ci_id) : null],
    ['Host', i.hostname || i.host_id],
    ['Started', fmtTime(i.started_at)], ['Updated', fmtTime(i.updated_at)],
    ['Resolved', fmtTime(i.resolved_at)], ['Assignee', i.assignee],
    ['Resolution', i.resolution ? `${i.resolution.code}${i.resolution.note ? ': ' + i.resolution.note : ''}` : null],
    i.flapping ? ['Flapping', 'yes'] : null,
  ])));
  const open = ['new', 'acknowledged', 'in_progress'].includes(i.state);
  if (can(WRITERS) && i.state !== 'closed') {
    const note = h('input', { id: 'incident-note', placeholder: 'note (required to resolve)', size: 40 });
    const assignee = h('input', { id: 'incident-assignee', placeholder: 'assignee', size: 14 });
    out.appendChild(h('div', { class: 'toolbar card', id: 'incident-actions' },
      h('label', {}, 'Note', note),
      i.state === 'new' ? action('Acknowledge', () => act({ action: 'acknowledge', note: note.value || undefined }), { id: 'ack' }) : null,
      open ? action('Resolve', () => {
        if (!note.value.trim()) throw new Error('Resolving needs a note: say what fixed it.');
        return act({ action: 'resolve', note: note.value.trim() });
      }, { id: 'resolve' }) : null,
      i.state === 'resolved' ? action('Reopen', () => act({ action: 'reopen', note: note.value.trim() }), { id: 'reopen' }) : null,
      open ? h('label', {}, 'Assignee', assignee) : null,
      open ? action('Assign', () => act({ action: 'assign', assignee: assignee.value.trim() }), { class: 'secondary' }) : null));
  }
  out.appendChild(h('h2', {}, `Alerts (${(i.alerts || []).length})`));
  out.appendChild(table([
    { t: 'Kind', v: (a) => a.kind },
    { t: 'CI', v: (a) => (a.ci_id ? link('#/ci/' + enc(a.ci_id), `${a.class} ${a.key}`) : `${a.class} ${a.key}`) },
    { t: 'Summary', v: (a) => a.summary },
    { t: 'Firing', v: (a) => (a.firing ? badge('firing', 'bad') : badge('recovered', 'ok')) },
    { t: 'Count', num: true, v: (a) => a.count },
    { t: 'First', v: (a) => fmtTime(a.first_at) },
    { t: 'Last', v: (a) => fmtTime(a.last_at) },
  ], i.alerts, 'No alerts.'));
  out.appendChild(h('h2', {}, 'Timeline'));
  out.appendChild(h('ol', { class: 'timeline', id: 'incident-timeline' }, (i.timeline || []).map((t) => h('li', {},
    h('div', {}, h('strong', {}, t.event), ' by ', t.actor, ' ', h('span', { class: 'when' }, fmtTime(t.at))),
    t.message ? h('div', { class: 'muted' }, t.message) : null))));
}

const CHANGE_NEXT = { approved: 'implementing', implementing: 'implemented', implemented: 'closed' };
const CHANGE_VERB = { implementing: 'Start', implemented: 'Complete', closed: 'Close' };

async function changes(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Changes'));
  const from = new Date(Date.now() - 7 * DAY);
  const q = new URLSearchParams({ from: from.toISOString() });
  if (params.get('state')) q.set('state', params.get('state'));
  out.appendChild(filterForm('changes', [{ label: 'State', input: select('state', params,
    ['draft', 'approved', 'implementing', 'implemented', 'closed', 'failed', 'cancelled']) }]));
  const list = (await api('/api/v1/changes?' + q)).items;
  const transition = (c, to) => api(`/api/v1/changes/${enc(c.id)}/transition`, { method: 'POST', body: { to } });

  out.appendChild(h('h2', {}, 'Forward schedule of change'));
  // The chart shows two days back and at least five ahead (at most 90 in all).
  const start = Date.now() - 2 * DAY;
  const end = Math.min(start + 90 * DAY,
    Math.max(Date.now() + 5 * DAY, ...list.map((c) => Date.parse(c.window.end))));
  out.appendChild(Charts.timeline({
    title: 'Change windows (two days back and ahead)', from: start, to: end, now: Date.now(),
    empty: 'no change window in this period',
    rows: list.slice(0, 40).map((c) => ({
      label: `${c.id} ${c.title}`,
      segments: [{ start: Date.parse(c.window.start), end: Date.parse(c.window.end),
        cls: c.outage_expected ? 'outage' : 'planned', title: `${c.id} ${c.state}: ${fmtTime(c.window.start)} – ${fmtTime(c.window.end)}` }],
    })),
  }));
  out.appendChild(table([
    { t: 'Id', v: (c) => c.id },
    { t: 'Type', v: (c) => c.type },
    { t: 'State', v: (c) => badge(c.state) },
    { t: 'Window', v: (c) => `${fmtTime(c.window.start)} – ${fmtTime(c.window.end)}` },
    { t: 'Outage', v: (c) => (c.outage_expected ? 'expected' : '—') },
    { t: 'Title', v: (c) => c.title },
    { t: 'Scope', v: (c) => (c.scope || []).map((s) => h('div', { class: 'mono' }, s)) },
    { t: 'Evidence', num: true, v: (c) => (c.evidence || []).length + (c.evidence_overflow || 0) },
    { t: '', v: (c) => [
      c.state === 'draft' && can(MANAGERS) ? action('Approve', () => transition(c, 'approved'), { class: 'approve' }) : null,
      CHANGE_NEXT[c.state] && can(WRITERS) ? action(CHANGE_VERB[CHANGE_NEXT[c.state]], () => transition(c, CHANGE_NEXT[c.state]), { class: 'secondary' }) : null,
    ] },
  ], list, 'No change records in this period.'));

  if (can(WRITERS)) {
    out.appendChild(h('h2', {}, 'Create a change record'));
    const inHours = (n) => new Date(Date.now() + n * 3600e3).toISOString().slice(0, 16);
    const f = {
      title: h('input', { name: 'title', required: true, size: 40 }),
      type: h('select', { name: 'type' }, ['normal', 'standard', 'emergency'].map((t) => h('option', { value: t }, t))),
      scope: h('textarea', { name: 'scope', rows: 2, cols: 40, required: true, placeholder: 'host=web-* class=package (one selector per line)' }),
      start: h('input', { name: 'start', type: 'datetime-local', value: inHours(1), required: true }),
      end: h('input', { name: 'end', type: 'datetime-local', value: inHours(3), required: true }),
      outage: h('input', { name: 'outage', type: 'checkbox' }),
    };
    const err = h('div');
    const form = h('form', { class: 'card toolbar', id: 'change-form' },
      h('label', {}, 'Title', f.title), h('label', {}, 'Type', f.type), h('label', {}, 'Scope', f.scope),
      h('label', {}, 'Window start (UTC)', f.start), h('label', {}, 'Window end (UTC)', f.end),
      h('label', { class: 'inline' }, f.outage, 'outage expected'),
      h('button', { type: 'submit' }, 'Create'), err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('/api/v1/changes', { method: 'POST', body: {
          title: f.title.value.trim(), type: f.type.value,
          scope: f.scope.value.split('\n').map((s) => s.trim()).filter(Boolean),
          window_start: f.start.value + ':00Z', window_end: f.end.value + ':00Z',
          outage_expected: f.outage.checked,
        } });
        render();
      } catch (e) { err.replaceChildren(errorBox(e)); }
    });
    out.appendChild(form);
  }
}

async function drift(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Drift'));
  out.appendChild(filterForm('drift', [
    { label: 'Host', input: input('host', params, { placeholder: 'hostname or host id' }) },
    { label: 'Verdict', input: select('verdict', params, ['unauthorized', 'accepted', 'authorized']) },
    { label: 'Open', input: select('open', params, ['true', 'false']) },
  ]));
  const q = new URLSearchParams({ limit: '1000' });
  for (const k of ['host', 'verdict', 'open']) if (params.get(k)) q.set(k, params.get(k));
  // Oldest first, paged: read at most 5 pages for the chart and show the newest rows.
  let items = [];
  for (let i = 0; i < 5; i++) {
    const page = (await api('/api/v1/drift?' + q)).items;
    items = items.concat(page);
    if (page.length < 1000) break;
    q.set('after', page[page.length - 1].id);
  }
  const perDay = new Map();
  const since = new Date(Date.now() - 29 * DAY).toISOString().slice(0, 10);
  for (let t = Date.parse(since); t <= Date.now(); t += DAY) perDay.set(new Date(t).toISOString().slice(0, 10), [0, 0, 0]);
  const slot = { unauthorized: 0, accepted: 1, authorized: 2 };
  for (const d of items) {
    const day = (d.observed_at || '').slice(0, 10);
    if (perDay.has(day)) perDay.get(day)[slot[d.verdict] ?? 1]++;
  }
  out.appendChild(Charts.bars({
    title: 'Drift per day (last 30 days)', names: ['unauthorized', 'accepted', 'authorized'],
    bars: [...perDay].map(([day, values]) => ({ label: day.slice(5), values })),
  }));
  out.appendChild(h('h2', {}, `Latest drift (${Math.min(items.length, 200)} of ${items.length}${items.length >= 5000 ? '+' : ''})`));
  out.appendChild(driftTable(items.slice(-200).reverse(), await hostNames()));
}

async function baselines(out) {
  out.appendChild(h('h1', {}, 'Baselines'));
  const list = (await api('/api/v1/baselines')).items;
  out.appendChild(table([
    { t: 'Id', v: (b) => link('#/baseline/' + enc(b.id), b.id) },
    { t: 'Name', v: (b) => b.name },
    { t: 'State', v: (b) => badge(b.state) },
    { t: 'CIs', num: true, v: (b) => b.items },
    { t: 'Captured', v: (b) => `${fmtTime(b.captured_at)} by ${b.captured_by}` },
    { t: 'Approved', v: (b) => (b.approved_by ? `${fmtTime(b.approved_at)} by ${b.approved_by}` : '—') },
    { t: 'Scope', v: (b) => (b.scope || []).map((s) => h('div', { class: 'mono' }, s)) },
    { t: '', v: (b) => [link('#/baseline/' + enc(b.id), 'diff'), ' ',
      b.state === 'pending' && can(MANAGERS) ? action('Approve', () => api(`/api/v1/baselines/${enc(b.id)}/approve`, { method: 'POST' }), { class: 'approve' }) : null] },
  ], list, 'No baselines yet: a host\'s first inventory becomes one.'));
  if (can(WRITERS)) {
    out.appendChild(h('h2', {}, 'Capture a baseline'));
    const name = h('input', { name: 'name', required: true });
    const scope = h('input', { name: 'scope', required: true, size: 40, placeholder: 'host=web-* class=package' });
    const err = h('div');
    const form = h('form', { class: 'card toolbar' }, h('label', {}, 'Name', name), h('label', {}, 'Scope selector', scope),
      h('button', { type: 'submit' }, 'Capture'), err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('/api/v1/baselines', { method: 'POST', body: { name: name.value.trim(), scope: [scope.value.trim()] } });
        render();
      } catch (e) { err.replaceChildren(errorBox(e)); }
    });
    out.appendChild(form);
  }
}

async function baseline(out, id) {
  const [list, diff, names] = await Promise.all([api('/api/v1/baselines'), api(`/api/v1/baselines/${enc(id)}/diff`), hostNames()]);
  const b = list.items.find((x) => x.id === id) || { id, name: '' };
  out.appendChild(h('h1', {}, `Baseline ${b.id} ${b.name}`));
  out.appendChild(h('p', {}, link('#/baselines', '← all baselines'), ' ', badge(b.state || '?'),
    ` compared with live state at ${fmtTime(diff.compared_at)}`));
  out.appendChild(h('div', { class: 'cards' }, stat(diff.unchanged, 'unchanged', 'ok'), stat(diff.added, 'added'),
    stat(diff.removed, 'removed'), stat(diff.changed, 'changed')));
  out.appendChild(table([
    { t: 'Difference', v: (e) => badge(e.kind, e.kind === 'changed' ? 'warn' : e.kind === 'added' ? 'ok' : 'bad') },
    { t: 'CI', v: (e) => link('#/ci/' + enc(e.ci_id), `${e.class} ${e.key}`) },
    { t: 'Host', v: (e) => names.get(e.host_id) || e.host_id },
    { t: 'Baseline → live', v: (e) => h('ul', { class: 'diff' }, (e.changes || []).map((c) =>
      h('li', { class: 'chg' }, `${c.name}: ${fmtVal(c.old)} → ${fmtVal(c.new)}`))) },
  ], diff.entries, 'Live state matches the baseline.'));
}

async function availability(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Availability'));
  const days = Number(params.get('days')) || 30;
  out.appendChild(filterForm('availability', [{ label: 'Period (days)', input: select('days', params, ['1', '7', '30', '90'], '30') }]));
  const to = Date.now(), from = to - days * DAY;
  const a = await api(`/api/v1/availability?from=${enc(new Date(from).toISOString())}&to=${enc(new Date(to).toISOString())}`);
  out.appendChild(Charts.timeline({
    title: `Outages, last ${days} days (red unplanned, grey planned)`, from, to,
    rows: a.items.slice(0, 50).map((i) => ({
      label: `${i.name} (${i.subject})`,
      segments: (i.outage_list || []).map((o) => ({
        start: Date.parse(o.start), end: o.end ? Date.parse(o.end) : to, cls: o.planned ? 'planned' : 'outage',
        title: `${o.id} ${fmtTime(o.start)} – ${o.end ? fmtTime(o.end) : 'ongoing'} ${o.cause || ''}`,
      })),
    })),
  }));
  out.appendChild(table([
    { t: 'Name', v: (i) => (i.ci_id ? link('#/ci/' + enc(i.ci_id), i.name) : i.name) },
    { t: 'Subject', v: (i) => i.subject },
    { t: 'Availability', v: (i) => [pctBar(i.availability_percent), `${Number(i.availability_percent).toFixed(3)} %`] },
    { t: 'Unplanned downtime', num: true, v: (i) => fmtDur(i.unplanned_downtime_seconds) },
    { t: 'Planned downtime', num: true, v: (i) => fmtDur(i.planned_downtime_seconds) },
    { t: 'Outages', num: true, v: (i) => i.outages },
    { t: 'MTBF', num: true, v: (i) => fmtDur(i.mtbf_seconds) },
    { t: 'MTRS', num: true, v: (i) => fmtDur(i.mtrs_seconds) },
  ], a.items, 'No availability figures for this period.'));
}

async function capacity(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Capacity'));
  const fc = await optional('/api/v1/capacity/forecast?all=true');
  if (!fc) return out.appendChild(notAvailable('Capacity management'));
  const items = fc.items || [];
  const risky = items.filter((f) => f.status === 'at_risk');
  out.appendChild(h('h2', {}, `At risk (${risky.length})`));
  const pick = (f) => `#/capacity?host=${enc(f.host_id)}&resource=${enc(f.resource)}`;
  out.appendChild(table([
    { t: 'Host', v: (f) => f.hostname || f.host_id },
    { t: 'Resource', v: (f) => link(pick(f), f.resource) },
    { t: 'Current', num: true, v: (f) => fmtNum(f.current) },
    { t: 'Threshold', num: true, v: (f) => fmtNum(f.threshold) },
    { t: 'Trend / day', num: true, v: (f) => fmtNum(f.slope_per_day) },
    { t: 'Days left', num: true, v: (f) => (f.days_to_threshold == null ? '—' : Number(f.days_to_threshold).toFixed(1)) },
    { t: 'Exhaustion', v: (f) => fmtTime(f.exhaustion_at) },
    { t: 'Confidence', num: true, v: (f) => (f.confidence == null ? '—' : Math.round(f.confidence * 100) + ' %') },
    { t: 'Incident', v: (f) => (f.incident ? link('#/incident/' + enc(f.incident), String(f.incident)) : '—') },
  ], risky, 'No resource is forecast to reach its threshold within the horizon.'));

  const chosen = items.find((f) => f.host_id === params.get('host') && f.resource === params.get('resource')) || risky[0] || items[0];
  out.appendChild(h('h2', {}, 'Trend and forecast'));
  if (!chosen) return out.appendChild(h('p', { class: 'empty' }, 'No capacity data yet: agents send metrics every minute.'));
  const choose = h('select', { id: 'capacity-resource' }, items.map((f) =>
    h('option', { value: pick(f), selected: f === chosen }, `${f.hostname || f.host_id} ${f.resource} (${f.status})`)));
  choose.addEventListener('change', () => { location.hash = choose.value; });
  out.appendChild(h('div', { class: 'toolbar' }, h('label', {}, 'Resource', choose)));
  const series = await api(`/api/v1/capacity?host=${enc(chosen.host_id)}&resource=${enc(chosen.resource)}`);
  const s = (series.items || [])[0];
  const pts = (s && s.points) || [];
  const avg = pts.filter((p) => p.avg != null).map((p) => [Date.parse(p.t), p.avg]);
  const max = pts.filter((p) => p.max != null).map((p) => [Date.parse(p.t), p.max]);
  const lines = [{ name: 'average', points: avg }, { name: 'maximum', points: max }];
  if (avg.length && chosen.slope_per_day != null && chosen.current != null) {
    const t0 = avg[avg.length - 1][0];
    const t1 = chosen.exhaustion_at ? Date.parse(chosen.exhaustion_at) : t0 + 7 * DAY;
    const v1 = chosen.exhaustion_at && chosen.threshold != null ? chosen.threshold : chosen.current + chosen.slope_per_day * ((t1 - t0) / DAY);
    lines.push({ name: 'forecast', dashed: true, points: [[t0, chosen.current], [t1, v1]] });
  }
  out.appendChild(Charts.line({ title: `${chosen.hostname || chosen.host_id} ${chosen.resource}`, series: lines,
    threshold: chosen.threshold, unit: (s && s.unit) || '' }));
}

async function licenses(out) {
  out.appendChild(h('h1', {}, 'License position'));
  const [position, software] = await Promise.all([optional('/api/v1/licenses/position'), optional('/api/v1/licenses/software')]);
  if (!position && !software) return out.appendChild(notAvailable('License management'));
  if (position) {
    const by = {};
    for (const p of position.items) by[p.status] = (by[p.status] || 0) + 1;
    out.appendChild(h('div', { class: 'cards' }, ['compliant', 'shortfall', 'surplus', 'unlicensed']
      .map((st) => stat(by[st] || 0, st, st === 'shortfall' || st === 'unlicensed' ? 'bad' : ''))));
    out.appendChild(table([
      { t: 'Vendor', v: (p) => p.vendor },
      { t: 'Product', v: (p) => `${p.product}${p.edition ? ' ' + p.edition : ''}` },
      { t: 'Metric', v: (p) => p.metric },
      { t: 'Entitled', num: true, v: (p) => fmtNum(p.entitled) },
      { t: 'Consumed', num: true, v: (p) => fmtNum(p.consumed) },
      { t: 'Balance', num: true, v: (p) => fmtNum(p.balance) },
      { t: 'Status', v: (p) => badge(p.status) },
      { t: 'Hosts', v: (p) => {
        const hosts = p.hosts || [], count = p.host_count ?? hosts.length;
        return hosts.slice(0, 5).map((x) => x.hostname || x.host_id).join(', ') + (count > 5 ? ` +${count - 5}` : '');
      } },
      { t: 'Expiring', num: true, v: (p) => (p.expiring || []).length },
      { t: 'Expired', num: true, v: (p) => (p.expired || []).length },
    ], position.items, 'No entitlements or licensable software yet.'));
  }
  out.appendChild(h('h2', {}, 'Software inventory'));
  if (!software) out.appendChild(notAvailable('The software inventory'));
  else {
    out.appendChild(table([
      { t: 'Vendor', v: (s) => s.vendor },
      { t: 'Product', v: (s) => `${s.product}${s.edition ? ' ' + s.edition : ''}` },
      { t: 'Versions', v: (s) => (s.versions || []).join(', ') },
      { t: 'Installs', num: true, v: (s) => s.installs },
      { t: 'Hosts', num: true, v: (s) => (Array.isArray(s.hosts) ? s.hosts.length : s.hosts) },
      { t: 'Cores', num: true, v: (s) => s.cores ?? '—' },
    ], software.items.slice(0, 500), 'No software recognised yet.'));
  }
}

async function download(path, filename) {
  const resp = await fetch(path, { headers: { Authorization: 'Bearer ' + sessionStorage.getItem(TOKEN_KEY) } });
  if (!resp.ok) throw new ApiError(resp.status, 'http', `download failed (HTTP ${resp.status})`);
  const url = URL.createObjectURL(await resp.blob());
  const a = h('a', { href: url, download: filename });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10e3);
}

// The authorised register from a CSV or JSON file (replaces the whole register).
function registerUpload() {
  const status = h('span');
  const file = h('input', { type: 'file', id: 'register-file', accept: '.csv,.json,text/csv,application/json' });
  file.addEventListener('change', async () => {
    const f = file.files && file.files[0];
    if (!f) return;
    try {
      const json = /\.json$/i.test(f.name) || f.type === 'application/json';
      const r = await api('/api/v1/audit/register', { method: 'PUT', raw: await f.text(), contentType: json ? 'application/json' : 'text/csv' });
      status.replaceChildren(h('span', { class: 'ok' }, `register imported: ${r.rows ?? '?'} rows`));
    } catch (e) { status.replaceChildren(errorBox(e)); }
  });
  return h('label', {}, 'Import the authorised register (CSV or JSON) ', file, status);
}

const DEF_NEXT = { open: ['action_taken', 'verified'], action_taken: ['verified'], verified: [] };
const DEF_VERB = { action_taken: 'Action taken', verified: 'Verified' };

function deficiencyTable(run) {
  const defs = run.deficiencies || [];
  const table_ = table([
    { t: 'Id', v: (d) => h('span', { class: 'mono' }, d.id) },
    { t: 'Kind', v: (d) => badge(d.kind, d.kind === 'mismatched' ? 'warn' : 'bad') },
    { t: 'CI', v: (d) => (d.ci_id ? link('#/ci/' + enc(d.ci_id), `${d.class} ${d.key}`) : `${d.class} ${d.key}`) },
    { t: 'Host', v: (d) => d.host },
    { t: 'Attribute', v: (d) => (d.attribute ? `${d.attribute}: expected ${d.expected ?? '—'}, found ${d.actual ?? '—'}` : '—') },
    { t: 'State', v: (d) => badge(d.state, d.state === 'verified' ? 'ok' : '') },
    { t: 'Note', v: (d) => [d.note || '', d.updated_by ? ` (${d.updated_by}, ${fmtTime(d.updated_at)})` : ''] },
    { t: '', v: (d) => (can(DEFICIENCY_MOVERS) ? (DEF_NEXT[d.state] || []).map((st) => action(DEF_VERB[st],
      () => api(`/api/v1/audit/runs/${enc(run.id)}/deficiencies/${enc(d.id)}`, { method: 'POST', body: { state: st } }),
      { class: 'secondary def-' + st })) : null) },
  ], defs, 'No deficiencies: live state matches the register.');
  const total = run.deficiencies_total ?? defs.length;
  return h('div', {}, table_, total > defs.length || run.truncated
    ? h('p', { class: 'notice' }, `${defs.length} of ${total} deficiencies shown: the full list is in the CSV report.`) : null);
}

async function audit(out, _arg, params) {
  out.appendChild(h('h1', {}, 'Configuration audit'));
  const runs = await optional('/api/v1/audit/runs');
  if (!runs) out.appendChild(notAvailable('Configuration audit'));
  else {
    if (can(AUDITORS)) out.appendChild(h('div', { class: 'toolbar' }, registerUpload(), action('Run an audit now', () => api('/api/v1/audit/runs', { method: 'POST', body: {} }), { id: 'run-audit' })));
    const list = (runs.items || []).slice().sort((a, b) => String(b.started_at).localeCompare(String(a.started_at)));
    out.appendChild(table([
      { t: 'Run', v: (r) => r.id },
      { t: 'Started', v: (r) => fmtTime(r.started_at) },
      { t: 'Missing', num: true, v: (r) => r.summary?.missing ?? '—' },
      { t: 'Unregistered', num: true, v: (r) => r.summary?.unregistered ?? '—' },
      { t: 'Mismatched', num: true, v: (r) => r.summary?.mismatched ?? '—' },
      { t: 'Registered / live', num: true, v: (r) => `${r.summary?.registered ?? '—'} / ${r.summary?.live ?? '—'}` },
      { t: 'Report', v: (r) => ['json', 'csv', 'html'].map((f) => action(f.toUpperCase(),
        () => download(`/api/v1/audit/runs/${enc(r.id)}/report?format=${f}`, `audit-${r.id}.${f}`), { class: 'secondary' })) },
    ], list, 'No audit has run yet: import the authorised register, then run one.'));
    if (list.length) {
      const latest = await api(`/api/v1/audit/runs/${enc(list[0].id)}`);
      out.appendChild(h('h2', {}, `Deficiencies of run ${latest.id}`));
      out.appendChild(deficiencyTable(latest));
    }
  }
  out.appendChild(h('h2', {}, 'Audit log'));
  if (can(AUDITORS)) {
    const result = h('div');
    const verify = h('button', { type: 'button', class: 'secondary' }, 'Verify the audit log');
    verify.addEventListener('click', async () => {
      try {
        const v = await api('/api/v1/audit-log/verify');
        result.replaceChildren(h('pre', { class: 'card mono' }, JSON.stringify(v, null, 2)));
      } catch (e) { result.replaceChildren(errorBox(e)); }
    });
    out.appendChild(h('div', { class: 'toolbar' }, verify, result));
  }
  const after = Number(params.get('after')) || 0;
  const log = await optional(`/api/v1/audit-log?limit=50${after ? '&after=' + after : ''}`);
  if (log) {
    out.appendChild(table([
      { t: 'Seq', num: true, v: (e) => e.seq },
      { t: 'Time', v: (e) => fmtTime(e.at || e.time) },
      { t: 'Actor', v: (e) => `${e.actor || '—'}${e.role ? ' (' + e.role + ')' : ''}` },
      { t: 'Action', v: (e) => e.action },
      { t: 'Object', v: (e) => fmtVal(e.object ?? e.target ?? '') },
      { t: 'Why', v: (e) => e.why || '—' },
    ], log.items, after ? 'No further entries.' : 'The audit log is empty.'));
    if (log.items.length === 50) out.appendChild(h('p', {}, link(`#/audit?after=${log.items[49].seq}`, 'Next entries →')));
  }
}

async function health(out, _arg, params) {
  out.appendChild(h('h1', {}, 'CMDB health'));
  const kpis = await optional('/api/v1/cmdb-health');
  if (!kpis) return out.appendChild(notAvailable('CMDB health'));
  const byKpi = new Map();
  for (const k of kpis.kpis || []) {
    if (!byKpi.has(k.kpi)) byKpi.set(k.kpi, []);
    byKpi.get(k.kpi).push(k);
  }
  const cards = [];
  for (const [name, rows] of byKpi) {
    const healthy = rows.reduce((a, r) => a + (r.healthy || 0), 0), total = rows.reduce((a, r) => a + (r.total || 0), 0);
    cards.push(stat(total ? `${((100 * healthy) / total).toFixed(1)} %` : '—', `${name} (${healthy} of ${total})`));
  }
  out.appendChild(h('div', { class: 'cards' }, cards));
  const src = kpis.compliance;
  out.appendChild(h('p', {}, `Computed ${fmtTime(kpis.generated_at)} over ${kpis.cis_scanned ?? '?'} CIs; compliance from `,
    src && typeof src === 'object' ? ['audit run ', link('#/audit', src.run_id), ` (${fmtTime(src.finished_at)})`] : String(src || 'no audit run') + '.'));
  out.appendChild(table([
    { t: 'KPI', v: (k) => link(`#/health?kpi=${enc(k.kpi)}&class=${enc(k.class)}`, k.kpi) },
    { t: 'Class', v: (k) => k.class },
    { t: 'Healthy', num: true, v: (k) => k.healthy },
    { t: 'Total', num: true, v: (k) => k.total },
    { t: 'Ratio', v: (k) => [pctBar((k.ratio ?? 0) * 100), `${((k.ratio ?? 0) * 100).toFixed(1)} %`] },
  ], kpis.kpis, 'No KPI figures yet.'));
  const q = new URLSearchParams();
  for (const k of ['kpi', 'class']) if (params.get(k)) q.set(k, params.get(k));
  out.appendChild(h('h2', {}, `Failing CIs${params.get('kpi') ? ` (${params.get('kpi')} ${params.get('class') || ''})` : ''}`));
  const failing = await optional('/api/v1/cmdb-health/failing?' + q);
  if (!failing) return out.appendChild(notAvailable('The list of failing CIs'));
  out.appendChild(table([
    { t: 'CI', v: (f) => (f.ci_id ? link('#/ci/' + enc(f.ci_id), f.key || f.ci_id) : f.key) },
    { t: 'Class', v: (f) => f.class },
    { t: 'KPI', v: (f) => f.kpi },
    { t: 'Host', v: (f) => (f.host_id ? link('#/host/' + enc(f.host_id), f.host_id) : '—') },
    { t: 'Reason', v: (f) => f.reason },
  ], (failing.items || []).slice(0, 500), 'No failing CI.'));
  const shown = Math.min(500, (failing.items || []).length);
  if ((failing.total ?? shown) > shown) out.appendChild(h('p', { class: 'notice' }, `${shown} of ${failing.total} failing CIs shown (cmdbctl health failing --format csv lists them all).`));
}

const PAGES = { fleet, host, cis, ci, incidents, incident, changes, drift, baselines, baseline, availability, capacity, licenses, audit, health };
const PARENT = { host: 'cis', ci: 'cis', incident: 'incidents', baseline: 'baselines' };

document.getElementById('logout').addEventListener('click', () => { logout('Logged out.'); location.hash = ''; });
window.addEventListener('hashchange', render);
render();
