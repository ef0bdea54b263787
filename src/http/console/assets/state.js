// What the signed-in console knows: the session, the caller (GET /v1/me), the visible clients and the client
// filter; and the one rule for showing a write control (DESIGN.md §6).

import { h, field } from './dom.js';

export const session = {
  me: null, // GET /v1/me
  clients: [], // GET /v1/clients, every page
  filter: '', // the client filter's slug ('' = all clients), mirrored in the hash as ?client=
};

// The caller's access level to a client: full, read or none.
function level(slug) {
  if (session.me.master_admin) return 'full';
  const grant = (session.me.access || []).find((a) => a.client === slug);
  return grant ? grant.level : 'none';
}

// Whether the caller holds `permission`, and (for a client) may use it there: a read permission needs any
// access, every other one full access.
export function can(permission, slug) {
  const me = session.me;
  if (!me) return false;
  if (me.master_admin) return true;
  if (!me.permissions.includes(permission)) return false;
  if (slug === undefined) return true;
  const l = level(slug);
  return permission.endsWith('.read') ? l !== 'none' : l === 'full';
}

// Whether the caller may use `permission` on at least one client.
export function canSomewhere(permission) {
  return session.me.master_admin || session.clients.some((c) => can(permission, c.slug));
}

export function masterSlug() {
  const master = session.clients.find((c) => c.kind === 'master');
  return master ? master.slug : 'master';
}

// The clients in tree order with their depth: the master, then each client under its parent.
export function tree() {
  const clients = session.clients;
  const slugs = new Set(clients.map((c) => c.slug));
  const children = new Map();
  for (const c of clients) {
    const parent = c.parent && slugs.has(c.parent) ? c.parent : '';
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(c);
  }
  const out = [];
  const walk = (parent, depth) => {
    const kids = (children.get(parent) || []).sort((a, b) =>
      (a.kind === 'master' ? -1 : 0) - (b.kind === 'master' ? -1 : 0) || a.name.localeCompare(b.name));
    for (const c of kids) {
      out.push({ client: c, depth });
      walk(c.slug, depth + 1);
    }
  };
  walk('', 0);
  return out;
}

// The filter's client and everything below it (every client without a filter).
export function filtered() {
  const rows = tree();
  if (!session.filter) return rows;
  const start = rows.findIndex((r) => r.client.slug === session.filter);
  if (start < 0) return [];
  const end = rows.findIndex((r, i) => i > start && r.depth <= rows[start].depth);
  return rows.slice(start, end < 0 ? rows.length : end).map((r) => ({ ...r, depth: r.depth - rows[start].depth }));
}

// A labelled <select> of the clients where the caller may use `permission`, indented by the tree; preselects
// `selected`, else the client filter, else the first. Returns {element, control}.
export function clientSelect(id, permission, selected, onchange) {
  const rows = tree().filter((r) => can(permission, r.client.slug));
  const want = [selected, session.filter].find((s) => s && rows.some((r) => r.client.slug === s));
  const control = h('select', { id, onchange: () => onchange(control.value) },
    rows.map(({ client: c, depth }) =>
      h('option', { value: c.slug, selected: c.slug === want }, `${'\u00a0\u00a0'.repeat(depth)}${c.name} (${c.slug})`)));
  return { element: field('Client', control), control };
}
