// Clients (#/clients): the client tree with status, server and schema version; create (with the provisioning
// progress), rename, suspend, resume, move and delete, each shown only when the caller may use it.

import { h, fill, field, select, table, messageBox, alert, note, badge, when, confirmDialog, showError, latest } from './dom.js';
import { get, post, patch, del, path, withQuery, follow, all } from './api.js';
import { session, can, filtered, masterSlug, tree } from './state.js';
import { reloadClients } from './app.js';

const SLUG = /^[a-z][a-z0-9-]{1,39}$/;

export async function render(view) {
  const progress = h('div', { class: 'progress', id: 'client-progress', 'aria-live': 'polite' });
  const body = h('div');
  const open = { slug: null }; // the client whose panel is open
  const servers = can('servers.manage', masterSlug()) ? await get('/v1/servers') : null;

  const redraw = () => drawTree(body, open, servers, progress, redraw);
  const createButton = can('clients.create')
    ? h('button', { type: 'button', id: 'new-client', class: 'create', 'aria-expanded': 'false',
      onclick: () => toggleCreate(view, createButton, progress, redraw) }, h('span', { 'aria-hidden': 'true' }, '+'), ' New client')
    : null;
  fill(view, h('div', { class: 'page-head' }, h('h1', {}, 'Clients'), createButton), progress, body);
  redraw();
}

function drawTree(body, open, servers, progress, redraw) {
  const rows = filtered();
  const trs = [];
  for (const { client: c, depth } of rows) {
    const manageable = can('clients.manage', c.slug) || can('clients.delete', c.slug);
    trs.push(h('tr', { 'data-slug': c.slug, class: open.slug === c.slug ? 'selected' : null },
      h('td', {}, h('span', { class: `indent d${Math.min(depth, 6)}` }, c.name)),
      h('td', {}, h('code', {}, c.slug)),
      h('td', {}, c.kind),
      h('td', { class: 'status' }, badge(c.status)),
      h('td', {}, c.server || '—', c.moving_to ? ` → ${c.moving_to}` : ''),
      h('td', { class: c.schema_version < c.latest_schema_version ? 'warn' : null },
        c.kind === 'inner' ? '—' : `${c.schema_version} / ${c.latest_schema_version}`),
      h('td', {}, manageable ? h('button', { type: 'button', class: 'manage', 'aria-expanded': String(open.slug === c.slug),
        onclick: () => {
          open.slug = open.slug === c.slug ? null : c.slug;
          redraw();
          const focus = body.querySelector(open.slug ? '#client-panel h2' : `tr[data-slug="${CSS.escape(c.slug)}"] .manage`);
          if (focus) focus.focus();
        } }, open.slug === c.slug ? 'Close' : 'Manage') : null)));
    if (open.slug === c.slug) {
      trs.push(h('tr', { class: 'detail' }, h('td', { colspan: 7 }, panel(c, servers, progress, open, redraw))));
    }
  }
  fill(body, rows.length
    ? table({ id: 'clients', class: 'tree' }, ['Name', 'Slug', 'Kind', 'Status', 'Server', 'Schema', ''], trs)
    : h('p', {}, 'No clients to show.'));
}

// Polls an operation, showing its progress and the client's status live, then reloads the tree.
async function watch(op, label, slug, progress, redraw) {
  const line = h('p', {}, `${label}: queued`);
  progress.append(line);
  const result = await follow(op, async (state) => {
    fill(line, `${label}: ${state.status}`, state.step ? ` (step: ${state.step})` : '',
      state.attempts > 1 ? `, attempt ${state.attempts}` : '',
      state.last_error ? h('span', { class: 'error' }, ` — ${state.last_error}`) : '',
      state.result && state.result.archive ? ` — archive: ${state.result.archive}` : '');
    const known = session.clients.find((c) => c.slug === slug);
    if (known && state.status !== 'succeeded') {
      try {
        Object.assign(known, await get(path`/v1/clients/${slug}`));
        const cell = document.querySelector(`tr[data-slug="${CSS.escape(slug)}"] .status`);
        if (cell) fill(cell, badge(known.status));
      } catch { /* gone already: the reload below shows it */ }
    }
  });
  line.className = result.status === 'succeeded' ? 'ok' : 'error';
  if (result.status === 'failed') line.setAttribute('role', 'alert');
  await reloadClients();
  redraw();
  return result;
}

function toggleCreate(view, button, progress, redraw) {
  const existing = view.querySelector('#create-client-form');
  if (existing) {
    existing.remove();
    button.setAttribute('aria-expanded', 'false');
    return;
  }
  button.setAttribute('aria-expanded', 'true');
  const name = h('input', { id: 'client-name', required: true, maxlength: 200, autocomplete: 'off' });
  const slug = h('input', { id: 'client-slug', required: true, pattern: SLUG.source, maxlength: 40,
    autocomplete: 'off', spellcheck: false });
  const parents = tree().filter((r) => r.client.kind !== 'inner' && r.client.status === 'active' && can('clients.create', r.client.slug));
  const parent = select({ id: 'client-parent' }, parents.map(({ client: c, depth }) =>
    [c.slug, `${'\u00a0\u00a0'.repeat(depth)}${c.name} (${c.slug})`]), session.filter || masterSlug());
  const box = messageBox();
  // An inner client lives in its parent's database and sees only a slice of it: the recipients of chosen lists.
  const kind = select({ id: 'client-kind' }, [['sub', 'Separate client (its own database)'],
    ['inner', 'Inner client (a slice of the parent’s recipients)']], 'sub');
  const lists = h('fieldset', { class: 'checks', id: 'client-scope', hidden: true },
    h('legend', {}, 'Its recipients: those on these mailing lists of the parent'));
  // The parent can change while its lists load: only the lists of the parent chosen last are shown.
  const loads = latest();
  const drawLists = async () => {
    const current = loads();
    lists.hidden = kind.value !== 'inner';
    if (lists.hidden) return;
    fill(lists, lists.firstChild, h('p', { class: 'muted' }, 'Loading the parent’s mailing lists…'));
    try {
      const found = await all(path`/v1/clients/${parent.value}/mailing-lists`);
      if (!current()) return;
      fill(lists, lists.firstChild, found.length ? found.map((l) => h('label', { class: 'check' },
        h('input', { type: 'checkbox', name: 'scope-list', value: String(l.id) }), ` ${l.name}`))
        : h('p', { class: 'muted' }, 'The parent has no mailing lists yet.'));
    } catch (error) {
      if (current()) fill(lists, lists.firstChild, h('p', { class: 'error' }, error.message));
    }
  };
  kind.addEventListener('change', drawLists);
  parent.addEventListener('change', drawLists);
  // Suggest a slug from the name until the slug is edited by hand.
  let slugEdited = false;
  slug.addEventListener('input', () => { slugEdited = true; });
  name.addEventListener('input', () => {
    if (!slugEdited) {
      slug.value = name.value.normalize('NFKD').replace(/\p{M}/gu, '').toLowerCase().replace(/[^a-z0-9]+/g, '-')
        .replace(/^[^a-z]+/, '').slice(0, 40).replace(/-+$/, '');
    }
  });
  const form = h('form', { id: 'create-client-form', class: 'card', novalidate: true },
    h('h2', {}, 'New client'),
    h('p', { class: 'muted' }, 'A client gets its own database; it is provisioned in the background.'),
    h('div', { class: 'grid' },
      field('Name', name),
      field('Slug', slug, 'Lower-case letters, digits and hyphens; 2–40 characters, starting with a letter.'),
      field('Parent', parent),
      field('Kind', kind)),
    lists,
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'create-client', class: 'primary' }, 'Create client')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!name.value.trim()) return alert(box, 'Enter a name.');
    if (!SLUG.test(slug.value)) return alert(box, 'The slug must match ^[a-z][a-z0-9-]{1,39}$ (e.g. acme-de).');
    const inner = kind.value === 'inner';
    const scope = [...lists.querySelectorAll('input[name=scope-list]:checked')].map((c) => Number(c.value));
    if (inner && !scope.length) return alert(box, 'Choose at least one mailing list for the inner client.');
    const submit = form.querySelector('#create-client');
    submit.disabled = true;
    try {
      const created = await post('/v1/clients', { name: name.value, slug: slug.value, parent: parent.value || undefined,
        ...(inner ? { kind: 'inner', scope: { lists: scope } } : {}) });
      form.remove();
      button.setAttribute('aria-expanded', 'false');
      session.clients.push(created);
      redraw();
      if (created.operation) watch(created.operation, `Creating ${created.slug}`, created.slug, progress, redraw).catch(showError(progress));
    } catch (error) {
      alert(box, error.message);
      submit.disabled = false;
    }
  });
  view.querySelector('.page-head').after(form);
  name.focus();
}

// The panel under a client's row: details and the actions the caller may use.
function panel(c, servers, progress, open, redraw) {
  const box = messageBox();
  const act = async (work) => {
    try {
      await work();
    } catch (error) {
      alert(box, error.message);
    }
  };
  const parts = [
    h('h2', { tabindex: '-1' }, c.name, ' ', h('span', { class: 'muted' }, `(${c.slug})`)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Database'), h('dd', {}, c.database || '—'),
      h('dt', {}, 'Parent'), h('dd', {}, c.parent || '—'),
      h('dt', {}, 'Created'), h('dd', {}, when(c.created_at)),
      h('dt', {}, 'Updated'), h('dd', {}, when(c.updated_at))),
  ];
  if (can('clients.manage', c.slug)) {
    const name = h('input', { id: 'rename-name', value: c.name, required: true, maxlength: 200 });
    const form = h('form', { class: 'inline', novalidate: true }, field('Name', name),
      h('button', { type: 'submit', id: 'rename-client' }, 'Rename'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (!name.value.trim()) return alert(box, 'Enter a name.');
      act(async () => {
        Object.assign(c, await patch(path`/v1/clients/${c.slug}`, { name: name.value }));
        await reloadClients();
        redraw();
      });
    });
    parts.push(form);
    const lifecycle = [];
    if (c.status === 'active' && c.kind !== 'master') {
      lifecycle.push(h('button', { type: 'button', id: 'suspend-client', onclick: () => act(async () => {
        Object.assign(c, await post(path`/v1/clients/${c.slug}/suspend`));
        redraw();
      }) }, 'Suspend'));
    }
    if (c.status === 'suspended') {
      lifecycle.push(h('button', { type: 'button', id: 'resume-client', onclick: () => act(async () => {
        Object.assign(c, await post(path`/v1/clients/${c.slug}/resume`));
        redraw();
      }) }, 'Resume'));
    }
    if (lifecycle.length) parts.push(h('div', { class: 'actions' }, lifecycle));
    if (servers && c.kind === 'sub' && c.status === 'active' && !c.moving_to) {
      const targets = servers.filter((s) => s.name !== c.server && s.policy === 'active');
      const target = select({ id: 'move-server' }, targets.map((s) => [s.name, `${s.name}${s.zone ? ` (${s.zone})` : ''}`]));
      const move = h('form', { class: 'inline', novalidate: true }, field('Move to server', target),
        h('button', { type: 'submit', id: 'move-client', disabled: !targets.length }, 'Move'));
      move.addEventListener('submit', (event) => {
        event.preventDefault();
        act(async () => {
          const moved = await post(path`/v1/clients/${c.slug}/move`, { server: target.value });
          Object.assign(c, moved);
          note(box, `Moving ${c.slug} to ${target.value}…`);
          watch(moved.operation, `Moving ${c.slug} to ${target.value}`, c.slug, progress, redraw).catch(showError(progress));
        });
      });
      parts.push(targets.length ? move : h('p', { class: 'muted' }, 'No other active server to move to.'));
    }
  }
  if (can('clients.delete', c.slug) && c.kind !== 'master' && c.status !== 'deleting') {
    parts.push(h('div', { class: 'actions' }, h('button', { type: 'button', id: 'delete-client', class: 'danger',
      onclick: () => confirmDelete(c, progress, open, redraw) }, 'Delete…')));
  }
  parts.push(box);
  return h('section', { id: 'client-panel', class: 'panel', 'aria-label': `Manage ${c.name}` }, parts);
}

function confirmDelete(c, progress, open, redraw) {
  const inner = c.kind === 'inner';
  const archive = h('input', { type: 'checkbox', id: 'delete-archive', checked: true });
  confirmDialog(`Delete client “${c.name}” (${c.slug})?`,
    inner ? 'The inner client is removed; its recipients stay in the parent’s database.'
      : 'Its database is dropped. This cannot be undone.',
    'Delete', async () => {
      const deleted = await del(withQuery(path`/v1/clients/${c.slug}`, { archive: inner ? undefined : archive.checked }));
      open.slug = null;
      Object.assign(c, deleted || { status: 'deleting' });
      redraw();
      if (deleted && deleted.operation) {
        watch(deleted.operation, `Deleting ${c.slug}`, c.slug, progress, redraw).catch(showError(progress));
      } else {
        await reloadClients();
        redraw();
      }
    },
    inner ? null : h('div', { class: 'check' }, archive,
      h('label', { for: 'delete-archive' }, 'Write an archive (pg_dump) of its database first')));
}
