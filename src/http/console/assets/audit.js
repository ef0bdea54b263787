// Audit (#/audit): every mutating call, newest first, filtered by client (the client filter by default) and user.

import { h, fill, field, messageBox, pager, badge, when, showError } from './dom.js';
import { get, withQuery } from './api.js';
import { session, tree } from './state.js';

export async function render(view) {
  const client = h('select', { id: 'audit-client' }, h('option', { value: '' }, 'All clients'),
    tree().map(({ client: c, depth }) => h('option', { value: c.slug, selected: c.slug === session.filter },
      `${'\u00a0\u00a0'.repeat(depth)}${c.name} (${c.slug})`)));
  const user = h('input', { id: 'audit-user', autocomplete: 'off', spellcheck: false });
  const form = h('form', { class: 'inline', role: 'search', novalidate: true }, field('Client', client), field('User', user),
    h('button', { type: 'submit', id: 'filter-audit' }, 'Show'));
  const body = h('div');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    draw(body, client.value, user.value.trim());
  });
  fill(view, h('h1', {}, 'Audit log'), form, body);
  await draw(body, client.value, '');
}

async function draw(body, client, user) {
  const box = messageBox();
  const tbody = h('tbody');
  const list = pager((cursor) => get(withQuery('/v1/audit', { client, user, cursor })), (items) => {
    tbody.append(...items.map((e) => h('tr', { 'data-id': e.id },
      h('td', {}, when(e.at)), h('td', {}, e.user || '—'), h('td', {}, e.client || '—'),
      h('td', {}, h('code', {}, e.action)), h('td', {}, h('code', {}, e.target)),
      h('td', {}, badge(e.outcome), ` ${e.status}`),
      h('td', {}, e.detail ? h('code', {}, JSON.stringify(e.detail)) : ''))));
  }, box);
  fill(body, h('div', { class: 'table-wrap' }, h('table', { id: 'audit' },
    h('thead', {}, h('tr', {}, ['When', 'User', 'Client', 'Action', 'Path', 'Outcome', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody)), list.button, box);
  await list.next().catch(showError(box));
}
