// Access (#/access/<slug>): seed 004's matrix. Clients on the left; for the ticked client, every user on the right
// with a level (full access, read only, invisible) and "private data"; one Save sends every row in one PUT.

import { h, fill, table, messageBox, alert, note, badge, latest } from './dom.js';
import { get, put, path } from './api.js';
import { session, can, filtered } from './state.js';
import { go, reloadClients } from './app.js';

const LEVELS = [['full', 'Full access'], ['read', 'Read only'], ['none', 'Invisible']];

// A render whose users arrive after a later render began (two clicks, or the page opened and a client ticked at
// once) draws nothing, so an older answer never replaces the rows being edited.
const renders = latest();

export async function render(view, route) {
  const current = renders();
  const rows = filtered();
  const wanted = route.args[0];
  const slug = rows.some((r) => r.client.slug === wanted) ? wanted : (rows[0] && rows[0].client.slug);
  const right = h('section', { class: 'matrix-users', 'aria-labelledby': 'access-users-title' });
  const left = h('fieldset', { class: 'matrix-clients' }, h('legend', {}, 'Clients'),
    h('ul', {}, rows.map(({ client: c, depth }) => {
      const id = `access-client-${c.slug}`;
      return h('li', { 'data-slug': c.slug, class: `indent d${Math.min(depth, 6)}` },
        h('input', { type: 'radio', name: 'access-client', id, value: c.slug, checked: c.slug === slug,
          onchange: () => go('access', c.slug) }),
        h('label', { for: id }, c.name, ' ', h('span', { class: 'muted' }, c.slug)));
    })));
  fill(view, h('h1', {}, 'Access'),
    h('p', { class: 'muted' }, 'Tick a client, then set each user’s access to it: full access, read only or invisible. ',
      '“Private data” allows seeing personal data (e-mail addresses, names, fields marked personal).'),
    h('div', { class: 'matrix' }, left, right));
  if (!slug) return fill(right, h('p', {}, 'No clients to show.'));
  const data = await get(path`/v1/clients/${slug}/access`);
  if (!current()) return;
  drawUsers(right, data);
}

// The users' rows for one client, from GET or PUT /v1/clients/{slug}/access.
function drawUsers(right, data) {
  const slug = data.client;
  const editable = can('users.manage', slug);
  const client = session.clients.find((c) => c.slug === slug);
  const box = messageBox();
  const trs = data.users.map((u) => {
    // Nobody can change their own access (the server refuses it): the caller's own row is shown, not editable.
    const fixed = !editable || u.username === session.me.username;
    const level = h('select', { name: `level-${u.username}`, 'aria-label': `Access of ${u.username} to ${slug}`,
      disabled: fixed }, LEVELS.map(([value, text]) => h('option', { value, selected: value === u.level }, text)));
    const privateData = h('input', { type: 'checkbox', name: `private-${u.username}`, checked: u.private_data,
      'aria-label': `Private data of ${u.username} on ${slug}`, disabled: fixed || u.level === 'none' });
    const refusal = h('td', { class: 'refusal' });
    const tr = h('tr', { 'data-username': u.username },
      h('th', { scope: 'row' }, u.display_name || u.username, h('br'), h('span', { class: 'muted' }, u.username),
        u.master_admin ? h('small', { class: 'note' }, 'Master admin: every client, whatever is set here.') : null,
        editable && u.username === session.me.username ? h('small', { class: 'note' }, 'Your own access: another administrator sets it.') : null),
      h('td', {}, u.home_client), h('td', {}, badge(u.status)),
      h('td', {}, level), h('td', { class: 'center' }, privateData), refusal);
    const mark = () => {
      privateData.disabled = fixed || level.value === 'none';
      if (level.value === 'none') privateData.checked = false;
      tr.classList.toggle('changed', changed());
    };
    const changed = () => level.value !== u.level || privateData.checked !== u.private_data;
    level.addEventListener('change', mark);
    privateData.addEventListener('change', mark);
    return { tr, u, level, privateData, refusal, changed };
  });
  const save = editable ? h('button', { type: 'submit', id: 'save-access', class: 'primary' }, 'Save') : null;
  const form = h('form', { id: 'access-form', novalidate: true },
    h('h2', { id: 'access-users-title' }, `Users’ access to ${client ? client.name : slug}`),
    editable ? null : h('p', { class: 'muted' }, 'You can see this matrix but not change it.'),
    data.truncated ? h('p', { class: 'warn' }, 'Not every user is listed: the list was cut short.') : null,
    trs.length
      ? table({ id: 'access-matrix' }, ['User', 'Home client', 'Status', 'Access', 'Private data', ''], trs.map((r) => r.tr))
      : h('p', {}, 'No users to show.'),
    box, save ? h('div', { class: 'actions' }, save) : null);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!editable) return;
    // Only the changed rows: unchanged ones would overwrite what another administrator saved meanwhile.
    const rows = trs.filter((r) => r.changed());
    if (!rows.length) return note(box, 'Nothing has changed.');
    save.disabled = true;
    rows.forEach((r) => fill(r.refusal));
    try {
      const saved = await put(path`/v1/clients/${slug}/access`, {
        users: rows.map((r) => ({ username: r.u.username, level: r.level.value, private_data: r.privateData.checked })),
      });
      session.me = await get('/v1/me');
      await reloadClients();
      drawUsers(right, saved);
      note(right.querySelector('.message'), 'Saved.');
    } catch (error) {
      const refused = (error.body && error.body.error && error.body.error.rows) || [];
      for (const row of refused) {
        const r = trs.find((t) => t.u.username === row.username);
        if (r) fill(r.refusal, h('span', { class: 'error' }, row.message));
      }
      alert(box, error.message);
      save.disabled = false;
    }
  });
  fill(right, form);
}
