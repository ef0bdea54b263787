// Overview (#/overview, the landing page): per visible client its status, server, schema version, size, counts
// and sync state, with when each figure was taken; and the cross-client target groups with their count per client.

import { h, fill, table, messageBox, badge, bytes, when, showError } from './dom.js';
import { get, path, all } from './api.js';
import { can, masterSlug, filtered } from './state.js';

export async function render(view) {
  const groups = h('section', { 'aria-labelledby': 'groups-title' });
  const rows = await all('/v1/overview');
  const order = filtered();
  const bySlug = new Map(rows.map((r) => [r.slug, r]));
  const shown = order.filter((o) => bySlug.has(o.client.slug)).map((o) => ({ row: bySlug.get(o.client.slug), depth: o.depth }));
  fill(view, h('h1', {}, 'Overview'),
    shown.length ? table({ id: 'overview' },
      ['Client', 'Status', 'Server', 'Schema', 'Size', 'Recipients', 'Lists', 'Fields', 'Templates', 'Last error'],
      shown.map(({ row: r, depth }) => h('tr', { 'data-slug': r.slug },
        h('th', { scope: 'row' }, h('span', { class: `indent d${Math.min(depth, 6)}` }, r.name, h('small', { class: 'note' }, r.slug))),
        h('td', { class: 'status' }, badge(r.status)), h('td', {}, r.server || '—'),
        h('td', { class: r.schema_version < r.latest_schema_version ? 'warn' : null }, `${r.schema_version} / ${r.latest_schema_version}`),
        h('td', {}, bytes(r.database_bytes), h('small', { class: 'note' }, r.size_at ? when(r.size_at) : 'not measured yet')),
        h('td', {}, r.recipients ?? '—', h('small', { class: 'note' }, r.counts_at ? when(r.counts_at) : 'not counted yet')),
        h('td', {}, r.lists ?? '—'),
        h('td', {}, sync(r.fields)), h('td', {}, sync(r.templates)),
        h('td', {}, r.last_error ? h('span', { class: 'error', title: when(r.last_error.at) }, `${r.last_error.source}: ${r.last_error.message}`) : ''))))
      : h('p', {}, 'No clients to show.'),
    h('p', { class: 'muted' }, 'Sizes and counts are measured periodically; each shows when it was taken.'),
    groups);
  if (can('recipients.read', masterSlug())) await drawGroups(groups);
  else groups.remove();
}

function sync(s) {
  const parts = [`${s.current}/${s.desired}`];
  if (s.pending) parts.push(`${s.pending} pending`);
  if (s.overridden) parts.push(`${s.overridden} overridden`);
  return [parts.join(', '), s.failed ? h('span', { class: 'error' }, `, ${s.failed} failed`) : ''];
}

async function drawGroups(section) {
  const groups = await all('/v1/target-groups');
  const rows = groups.map((g) => {
    const counts = h('tr', { class: 'detail', hidden: true }, h('td', { colspan: 4, 'aria-live': 'polite' }));
    const button = h('button', { type: 'button', class: 'count-group', onclick: async () => {
      button.disabled = true;
      counts.hidden = false;
      fill(counts.firstChild, 'Counting…');
      try {
        const c = await get(path`/v1/target-groups/${g.id}/count`);
        fill(counts.firstChild, h('p', {}, h('strong', {}, `Total: ${c.total}`)),
          table({ class: 'group-counts' }, ['Client', 'Count', 'Time'], c.clients.map((x) => h('tr', { 'data-slug': x.client },
            h('th', { scope: 'row' }, x.client),
            h('td', {}, x.error ? h('span', { class: 'error' }, x.error.message) : String(x.count)),
            h('td', {}, `${x.elapsed_ms} ms`)))));
      } catch (error) {
        fill(counts.firstChild);
        showError(counts.firstChild)(error);
      } finally {
        button.disabled = false;
      }
    } }, 'Count');
    return [h('tr', { 'data-group': g.id }, h('th', { scope: 'row' }, g.name),
      h('td', {}, h('code', {}, JSON.stringify(g.rule))),
      h('td', {}, g.selection === 'clients' ? (g.clients || []).join(', ') : g.selection === 'parent' ? `below ${g.parent || '—'}` : 'all clients'),
      h('td', {}, button)), counts];
  });
  fill(section, h('h2', { id: 'groups-title' }, 'Cross-client target groups'),
    rows.length ? table({ id: 'target-groups' }, ['Name', 'Rule', 'Clients', ''], rows.flat()) : h('p', {}, 'No cross-client target groups.'),
    messageBox());
}
