// sae-lens-clt graph viewer: plain JavaScript and SVG, no library, nothing fetched from
// another machine. Reads the graph JSON (circuit-tracer / Neuronpedia format) from the
// local server (viewer/server.py), draws nodes by layer (rows) and token position
// (columns), shows a node's details and its feature file on click, an edge's weight on
// hover, and keeps the pinned nodes and supernodes in the graph's qParams.
'use strict';

const SVG_NS = 'http://www.w3.org/2000/svg';
const ROW_HEIGHT = 64;       // px between layer rows
const NODE_GAP = 22;         // px between the nodes of one (layer, position) cell
const MIN_COLUMN = 70;       // px, the narrowest position column
const LEFT = 60, TOP = 70, BOTTOM = 70;
const MAX_EDGES = 300;       // strongest edges drawn; a selected node's edges always are

const state = {
  slug: null, graph: null, byId: new Map(), pinned: new Set(), supernodes: [],
  selected: null, xy: new Map(), saveTimer: null, version: 0,
};

const $ = (id) => document.getElementById(id);

function svg(tag, attrs = {}, parent = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function html(tag, attrs = {}, text = null) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== null) el.textContent = text;
  return el;
}

function setStatus(text, isError = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('error', isError);
}

async function getJSON(url, options = {}) {
  const res = await fetch(url, { cache: 'no-store', ...options });
  if (!res.ok) throw new Error(`${url}: ${res.status}`);
  return res.json();
}

const KIND = {
  'cross layer transcoder': 'feature', 'mlp reconstruction error': 'error',
  'embedding': 'embedding', 'logit': 'logit',
};

function nodeRow(node) {
  if (node.layer === 'E') return 0;
  const layer = parseInt(node.layer, 10);
  return KIND[node.feature_type] === 'logit' ? layer : layer + 1;
}

function nodeName(node) {
  const kind = KIND[node.feature_type];
  const tokens = state.graph.metadata.prompt_tokens;
  const at = `@${JSON.stringify(tokens[node.ctx_idx] ?? node.ctx_idx)}`;
  if (kind === 'feature') return `L${node.layer} F${node.node_id.split('_')[1]} ${at}`;
  if (kind === 'error') return `error L${node.layer} ${at}`;
  if (kind === 'embedding') return `embedding ${at}`;
  return node.clerp || `logit ${node.feature}`;
}

// a node's name and, when it says more, its label (a logit's name is its label)
function nodeTitle(node) {
  const name = nodeName(node);
  return node.clerp && node.clerp !== name ? `${name} · ${node.clerp}` : name;
}

function shortText(text, n = 16) {
  return text.length <= n ? text : text.slice(0, n - 1) + '…';
}

// ------------------------------------------------------------------ layout and drawing
function layout(graph) {
  const nPos = graph.metadata.prompt_tokens.length;
  const cells = new Map();
  let maxRow = 0;
  for (const node of graph.nodes) {
    const key = `${node.ctx_idx}|${nodeRow(node)}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(node);
    maxRow = Math.max(maxRow, nodeRow(node));
  }
  const widest = new Array(nPos).fill(1);
  for (const [key, members] of cells) {
    const pos = parseInt(key.split('|')[0], 10);
    widest[pos] = Math.max(widest[pos], members.length);
  }
  const widths = widest.map((n) => Math.max(MIN_COLUMN, n * NODE_GAP + 16));
  const left = [];
  widths.reduce((acc, w, i) => { left[i] = acc; return acc + w; }, LEFT);
  const xy = new Map();
  const rank = (n) => (n.influence === null ? Infinity : n.influence);
  for (const [key, members] of cells) {
    const [pos, row] = key.split('|').map((v) => parseInt(v, 10));
    members.sort((a, b) => rank(a) - rank(b));
    const centre = left[pos] + widths[pos] / 2;
    members.forEach((node, k) => {
      const dx = (k - (members.length - 1) / 2) * NODE_GAP;
      xy.set(node.node_id, [centre + dx, TOP + (maxRow - row) * ROW_HEIGHT]);
    });
  }
  const width = left[nPos - 1] + widths[nPos - 1] + 20;
  return { xy, left, widths, maxRow, width, height: TOP + maxRow * ROW_HEIGHT + BOTTOM };
}

function drawAxes(root, graph, geo) {
  const axis = svg('g', { class: 'axis' }, root);
  const nLayers = geo.maxRow - 1;
  for (let row = 0; row <= geo.maxRow; row++) {
    const y = TOP + (geo.maxRow - row) * ROW_HEIGHT;
    svg('line', { x1: LEFT - 10, x2: geo.width, y1: y, y2: y }, axis);
    const name = row === 0 ? 'emb' : row === geo.maxRow ? 'logits' : `L${row - 1}`;
    svg('text', { x: 8, y: y + 4 }, axis).textContent = row <= nLayers + 1 ? name : '';
  }
  graph.metadata.prompt_tokens.forEach((tok, pos) => {
    const x = geo.left[pos] + geo.widths[pos] / 2;
    const t = svg('text', { x, y: geo.height - BOTTOM + 40, 'text-anchor': 'middle' }, axis);
    t.textContent = shortText(tok, 12);
  });
}

function strongestLinks(graph) {
  const links = [...graph.links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  const keep = new Set(links.slice(0, MAX_EDGES));
  if (state.selected) {
    for (const l of graph.links) {
      if (l.source === state.selected || l.target === state.selected) keep.add(l);
    }
  }
  return [...keep].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));
}

function drawEdges(root, graph) {
  const group = svg('g', { id: 'edges' }, root);
  const links = strongestLinks(graph);
  const maxW = Math.max(1e-12, ...links.map((l) => Math.abs(l.weight)));
  for (const link of links) {
    const a = state.xy.get(link.source), b = state.xy.get(link.target);
    if (!a || !b) continue;
    const strength = Math.abs(link.weight) / maxW;
    const touches = state.selected && (link.source === state.selected || link.target === state.selected);
    const colour = link.weight > 0 ? '31,111,197' : '197,49,31';
    const opacity = touches ? 0.9 : 0.08 + 0.6 * strength;
    const d = `M${a[0]},${a[1]} L${b[0]},${b[1]}`;
    svg('path', {
      class: 'edge', d, stroke: `rgba(${colour},${opacity.toFixed(3)})`,
      'stroke-width': (0.4 + 3 * strength + (touches ? 1 : 0)).toFixed(2),
    }, group);
    const hit = svg('path', { class: 'edge-hit', d, 'data-source': link.source,
      'data-target': link.target, 'data-weight': link.weight }, group);
    hit.addEventListener('mousemove', (ev) => showTooltip(ev,
      `${nodeName(state.byId.get(link.source))} → ${nodeName(state.byId.get(link.target))}: ` +
      `${link.weight.toPrecision(4)}`));
    hit.addEventListener('mouseleave', hideTooltip);
  }
}

function drawNodes(root, graph) {
  const group = svg('g', { id: 'nodes' }, root);
  const labelled = new Set(graph.nodes
    .filter((n) => KIND[n.feature_type] === 'feature' && n.clerp)
    .sort((a, b) => (a.influence ?? Infinity) - (b.influence ?? Infinity))
    .slice(0, 30).map((n) => n.node_id));
  for (const node of graph.nodes) {
    const kind = KIND[node.feature_type];
    const [x, y] = state.xy.get(node.node_id);
    const g = svg('g', { class: `node ${kind}`, 'data-id': node.node_id,
      transform: `translate(${x},${y})` }, group);
    if (state.pinned.has(node.node_id)) g.classList.add('pinned');
    if (state.selected === node.node_id) g.classList.add('selected');
    if (kind === 'feature') svg('circle', { class: 'mark', r: 7 }, g);
    else if (kind === 'logit') svg('path', { class: 'mark', d: 'M0,-8 L8,0 L0,8 L-8,0 Z' }, g);
    else svg('rect', { class: 'mark', x: -6, y: -6, width: 12, height: 12 }, g);
    svg('title', {}, g).textContent = `${nodeName(node)}${node.clerp ? ' — ' + node.clerp : ''}`;
    if (labelled.has(node.node_id) || kind === 'logit' || state.pinned.has(node.node_id)) {
      const text = kind === 'logit' ? node.clerp.replace(/^Output /, '') : node.clerp;
      svg('text', { x: 4, y: -10, transform: 'rotate(-35)' }, g).textContent = shortText(text, 18);
    }
    g.addEventListener('click', (ev) => {
      if (ev.shiftKey) togglePin(node.node_id);
      else select(node.node_id);
    });
  }
}

function render() {
  const graph = state.graph;
  const root = $('graph');
  root.replaceChildren();
  const geo = layout(graph);
  state.xy = geo.xy;
  // fit the pane's width (never below 60 % scale: wider graphs scroll instead)
  root.setAttribute('viewBox', `0 0 ${geo.width} ${geo.height}`);
  root.style.width = '100%';
  root.style.minWidth = `${Math.round(geo.width * 0.6)}px`;
  root.style.maxWidth = `${Math.round(geo.width * 1.25)}px`;
  root.removeAttribute('width');
  root.removeAttribute('height');
  drawAxes(root, graph, geo);
  drawEdges(root, graph);
  drawNodes(root, graph);
  renderSubgraph();
}

function showTooltip(ev, text) {
  const tip = $('tooltip');
  const pane = $('graph-pane').getBoundingClientRect();
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = `${ev.clientX - pane.left + $('graph-pane').scrollLeft + 12}px`;
  tip.style.top = `${ev.clientY - pane.top + $('graph-pane').scrollTop + 12}px`;
}

function hideTooltip() { $('tooltip').hidden = true; }

// ------------------------------------------------------------------ node detail
function linkList(title, links, other) {
  const box = html('div');
  box.appendChild(html('h3', {}, title));
  const ul = html('ul', { class: 'link-list' });
  for (const link of links.slice(0, 8)) {
    const node = state.byId.get(link[other]);
    const li = html('li', { 'data-id': node.node_id });
    li.appendChild(html('span', { class: link.weight > 0 ? 'pos' : 'neg' },
      `${link.weight > 0 ? '+' : ''}${link.weight.toPrecision(3)} `));
    li.appendChild(document.createTextNode(nodeTitle(node)));
    li.addEventListener('click', () => select(node.node_id));
    ul.appendChild(li);
  }
  if (!links.length) ul.appendChild(html('li', { class: 'hint' }, 'none in the pruned graph'));
  box.appendChild(ul);
  return box;
}

function tokenList(cls, title, tokens) {
  const box = html('div');
  box.appendChild(html('h3', {}, title));
  const p = html('p', { class: `tokens ${cls}` });
  for (const t of tokens) p.appendChild(html('span', {}, t));
  box.appendChild(p);
  return box;
}

function contextsBox(feature) {
  const box = html('div', { id: 'contexts' });
  box.appendChild(html('h3', {}, 'Top activating contexts'));
  const top = (feature.examples_quantiles || [])[0];
  const examples = top ? top.examples : [];
  const max = Math.max(1e-9, feature.act_max || 0);
  for (const ex of examples.slice(0, 8)) {
    const line = html('div', { class: 'context' });
    ex.tokens.forEach((tok, i) => {
      const a = ex.tokens_acts_list[i] || 0;
      const span = html('span', {}, tok);
      if (a > 0) span.style.background = `rgba(243,156,52,${Math.min(1, a / max).toFixed(3)})`;
      if (i === ex.train_token_ind) span.style.fontWeight = 'bold';
      span.title = a.toPrecision(3);
      line.appendChild(span);
    });
    box.appendChild(line);
  }
  if (!examples.length) box.appendChild(html('p', { class: 'hint' }, 'no examples'));
  return box;
}

async function featureFile(node) {
  const scan = state.graph.metadata.scan;
  const res = await getJSON(`/api/feature?scan=${encodeURIComponent(scan)}&index=${node.feature}`);
  return res.feature;
}

async function showDetail(node) {
  const box = $('node-detail');
  box.replaceChildren();
  box.appendChild(html('h3', { id: 'detail-title' }, nodeName(node)));
  if (node.clerp) box.appendChild(html('p', { id: 'detail-label' }, node.clerp));
  const facts = html('table', { class: 'facts' });
  const add = (k, v) => {
    if (v === null || v === undefined) return;
    const tr = html('tr');
    tr.appendChild(html('td', {}, k));
    tr.appendChild(html('td', {}, typeof v === 'number' ? v.toPrecision(4) : String(v)));
    facts.appendChild(tr);
  };
  add('activation', node.activation);
  add('influence (cumulative)', node.influence);
  if (KIND[node.feature_type] === 'logit') {
    // a token's probability; a custom target's (logit difference, direction, feature) weight
    const custom = node.target_kind && node.target_kind !== 'token';
    add(custom ? 'weight' : 'probability', node.token_prob);
  }
  box.appendChild(facts);
  const pin = html('button', { id: 'pin-button', type: 'button' },
    state.pinned.has(node.node_id) ? 'unpin' : 'pin to subgraph');
  pin.addEventListener('click', () => togglePin(node.node_id));
  box.appendChild(pin);
  const inputs = state.graph.links.filter((l) => l.target === node.node_id)
    .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  const outputs = state.graph.links.filter((l) => l.source === node.node_id)
    .sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  box.appendChild(linkList('Strongest inputs', inputs, 'source'));
  box.appendChild(linkList('Strongest outputs', outputs, 'target'));
  if (KIND[node.feature_type] !== 'feature') return;
  const slot = html('div', { id: 'feature-file' }, 'loading feature file…');
  box.appendChild(slot);
  try {
    const feature = await featureFile(node);
    slot.replaceChildren();
    if (!feature) {
      slot.appendChild(html('p', { class: 'hint' },
        'no feature file for this feature: run `sae-lens-clt features` into this folder'));
      return;
    }
    const freq = html('p', { id: 'density' },
      `fires on ${(100 * feature.activation_frequency).toPrecision(3)}% of tokens; ` +
      `max activation ${feature.act_max.toPrecision(3)}`);
    slot.appendChild(freq);
    slot.appendChild(contextsBox(feature));
    slot.appendChild(tokenList('promoted', 'Promotes', feature.top_logits));
    slot.appendChild(tokenList('suppressed', 'Suppresses', feature.bottom_logits));
  } catch (err) {
    slot.textContent = `feature file could not be read: ${err.message}`;
  }
}

function select(id) {
  state.selected = id;
  render();
  showDetail(state.byId.get(id));
  scheduleSave();
}

// ------------------------------------------------------------------ subgraph and saving
function togglePin(id) {
  if (state.pinned.has(id)) state.pinned.delete(id);
  else state.pinned.add(id);
  render();
  const btn = $('pin-button');
  if (btn && state.selected === id) btn.textContent = state.pinned.has(id) ? 'unpin' : 'pin to subgraph';
  scheduleSave();
}

function renderSubgraph() {
  const list = $('pinned-list');
  list.replaceChildren();
  for (const id of state.pinned) {
    const node = state.byId.get(id);
    if (!node) continue;
    const li = html('li', { 'data-id': id });
    const box = html('input', { type: 'checkbox', value: id });
    li.appendChild(box);
    li.appendChild(document.createTextNode(` ${nodeTitle(node)}`));
    list.appendChild(li);
  }
  if (!state.pinned.size) list.appendChild(html('li', { class: 'hint' }, 'no pinned nodes'));
  const groups = $('supernode-list');
  groups.replaceChildren();
  state.supernodes.forEach(([name, ...ids], k) => {
    const li = html('li', { class: 'supernode' }, `▣ ${name}: ${ids.length} nodes `);
    const drop = html('button', { type: 'button' }, 'ungroup');
    drop.addEventListener('click', () => { state.supernodes.splice(k, 1); renderSubgraph(); scheduleSave(); });
    li.appendChild(drop);
    groups.appendChild(li);
  });
}

function qParams() {
  const q = { ...(state.graph.qParams || {}) };
  q.pinnedIds = [...state.pinned];
  q.supernodes = state.supernodes;
  q.clickedId = state.selected || '';
  q.linkType = q.linkType || 'both';
  q.sg_pos = q.sg_pos || '';
  return q;
}

// Each change bumps state.version; "saved" is shown only once the latest version is on
// disk (an earlier save finishing late must not claim it), and <body data-saved> holds it.
function scheduleSave() {
  clearTimeout(state.saveTimer);
  state.version += 1;
  setStatus('saving…');
  state.saveTimer = setTimeout(save, 150);
}

async function save() {
  const q = qParams();
  const version = state.version;
  try {
    await getJSON(`/save_graph/${encodeURIComponent(state.slug)}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ qParams: q }),
    });
    state.graph.qParams = q;
    if (version === state.version) {
      setStatus('saved');
      document.body.dataset.saved = String(version);
    }
  } catch (err) {
    setStatus(`not saved: ${err.message}`, true);
  }
}

// ------------------------------------------------------------------ loading graphs
async function loadGraph(slug) {
  setStatus('loading…');
  const graph = await getJSON(`/data/${encodeURIComponent(slug)}.json`);
  state.slug = slug;
  state.graph = graph;
  state.byId = new Map(graph.nodes.map((n) => [n.node_id, n]));
  const q = graph.qParams || {};
  state.pinned = new Set((q.pinnedIds || []).filter((id) => state.byId.has(id)));
  state.supernodes = (q.supernodes || []).map((s) => [...s]);
  state.selected = state.byId.has(q.clickedId) ? q.clickedId : null;
  $('prompt').textContent = graph.metadata.prompt;
  const url = new URL(window.location);
  url.searchParams.set('slug', slug);
  history.replaceState(null, '', url);
  render();
  if (state.selected) await showDetail(state.byId.get(state.selected));
  else $('node-detail').replaceChildren(html('p', { class: 'hint' },
    'Click a node for its details; shift-click pins it to the subgraph.'));
  setStatus(`${graph.nodes.length} nodes, ${graph.links.length} links`);
}

async function main() {
  $('group-button').addEventListener('click', () => {
    const ids = [...document.querySelectorAll('#pinned-list input:checked')].map((b) => b.value);
    const name = $('supernode-name').value.trim() || `group ${state.supernodes.length + 1}`;
    if (!ids.length) { setStatus('check pinned nodes to group', true); return; }
    state.supernodes.push([name, ...ids]);
    $('supernode-name').value = '';
    renderSubgraph();
    scheduleSave();
  });
  $('clear-button').addEventListener('click', () => {
    state.pinned.clear(); state.supernodes = []; render(); scheduleSave();
  });
  const { graphs } = await getJSON('/data/graph-metadata.json');
  const select = $('graph-select');
  for (const g of graphs) select.appendChild(html('option', { value: g.slug }, g.slug));
  select.addEventListener('change', () => loadGraph(select.value));
  if (!graphs.length) { setStatus('no graph JSON files in this folder', true); return; }
  const wanted = new URL(window.location).searchParams.get('slug');
  const slug = graphs.some((g) => g.slug === wanted) ? wanted : graphs[0].slug;
  select.value = slug;
  await loadGraph(slug);
}

main().catch((err) => setStatus(`error: ${err.message}`, true));
