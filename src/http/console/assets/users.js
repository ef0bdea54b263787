// Users (#/users, #/users/<username>): the list (by home client with the filter), create, and one user's detail:
// display name, roles, enable/disable, delete, access per client and API tokens.

import { h, fill, field, table, messageBox, alert, note, badge, when, pager, confirmDialog, showError, latest } from './dom.js';
import { get, post, patch, del, path, withQuery } from './api.js';
import { session, can, canSomewhere, tree } from './state.js';
import { href, go } from './app.js';

const USERNAME = /^[a-z][a-z0-9._-]{1,62}$/;

export async function render(view, route) {
  if (route.args[0]) return detail(view, route.args[0]);
  const box = messageBox();
  const tbody = h('tbody');
  const list = pager((cursor) => get(withQuery('/v1/users', { client: session.filter, cursor })), (items) => {
    tbody.append(...items.map((u) => h('tr', { 'data-username': u.username },
      h('th', { scope: 'row' }, h('a', { href: href('users', u.username) }, u.username)),
      h('td', {}, u.display_name), h('td', {}, u.home_client), h('td', {}, badge(u.status)),
      h('td', {}, u.roles.join(', ')))));
  }, box);
  const create = canSomewhere('users.manage')
    ? h('button', { type: 'button', id: 'new-user', class: 'create', onclick: () => createForm(view).catch(showError(view)) },
      h('span', { 'aria-hidden': 'true' }, '+'), ' New user')
    : null;
  fill(view, h('div', { class: 'page-head' }, h('h1', {}, 'Users'), create),
    session.filter ? h('p', { class: 'muted' }, `Users whose home client is ${session.filter}.`) : null,
    h('div', { class: 'table-wrap' }, h('table', { id: 'users' },
      h('thead', {}, h('tr', {}, ['Username', 'Name', 'Home client', 'Status', 'Roles'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody)),
    list.button, box);
  await list.next();
}

// Role checkboxes: every role, the held ones ticked.
function roleChecks(roles, held, disabled) {
  return h('fieldset', { class: 'checks' }, h('legend', {}, 'Roles'), roles.map((r) => {
    const id = `role-${r.name}`;
    return h('div', { class: 'check' },
      h('input', { type: 'checkbox', id, name: 'role', value: r.name, checked: held.includes(r.name), disabled }),
      h('label', { for: id, title: r.permissions.join(', ') }, r.name));
  }));
}
const ticked = (form) => [...form.querySelectorAll('input[name=role]:checked')].map((i) => i.value);

// Overlapping loads draw only the last one: a second click on "New user" before the roles arrive opens one form, a
// refresh after a save (or a token's creation) never loses to an older one still under way.
const forms = latest();
const details = latest();
const tokenLists = latest();

async function createForm(view) {
  const current = forms();
  const existing = view.querySelector('#create-user-form');
  if (existing) return existing.remove();
  const roles = await get('/v1/roles');
  if (!current()) return;
  const username = h('input', { id: 'user-username', required: true, pattern: USERNAME.source, autocomplete: 'off', spellcheck: false });
  const display = h('input', { id: 'user-display-name', maxlength: 200, autocomplete: 'off' });
  const homes = tree().filter((r) => can('users.manage', r.client.slug));
  const home = h('select', { id: 'user-home' }, homes.map(({ client: c, depth }) =>
    h('option', { value: c.slug, selected: c.slug === session.filter }, `${'\u00a0\u00a0'.repeat(depth)}${c.name} (${c.slug})`)));
  const box = messageBox();
  const form = h('form', { id: 'create-user-form', class: 'card', novalidate: true }, h('h2', {}, 'New user'),
    h('div', { class: 'grid' }, field('Username', username, 'Lower-case letters, digits, “.”, “_”, “-”; 2–63 characters.'),
      field('Display name', display), field('Home client', home)),
    roleChecks(roles, []), box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'create-user', class: 'primary' }, 'Create user')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!USERNAME.test(username.value)) return alert(box, 'The username must match ^[a-z][a-z0-9._-]{1,62}$.');
    try {
      const user = await post('/v1/users', { username: username.value, display_name: display.value,
        home_client: home.value, roles: ticked(form) });
      go('users', user.username);
    } catch (error) {
      alert(box, error.message);
    }
  });
  view.querySelector('.page-head').after(form);
  username.focus();
}

async function detail(view, username) {
  const current = details();
  const [user, roles] = await Promise.all([get(path`/v1/users/${username}`), get('/v1/roles')]);
  if (!current()) return;
  const self = username === session.me.username;
  const manage = can('users.manage', user.home_client);
  const box = messageBox();
  const act = (work) => work().catch((error) => alert(box, error.message));

  const display = h('input', { id: 'edit-display-name', value: user.display_name, maxlength: 200, disabled: !manage });
  const editForm = h('form', { id: 'edit-user-form', class: 'card', novalidate: true }, h('h2', {}, 'Profile and roles'),
    field('Display name', display), roleChecks(roles, user.roles, !manage || self),
    self ? h('p', { class: 'muted' }, 'You cannot change your own roles or status.') : null,
    manage ? h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'save-user', class: 'primary' }, 'Save')) : null);
  editForm.addEventListener('submit', (event) => {
    event.preventDefault();
    act(async () => {
      const body = { display_name: display.value };
      if (!self) body.roles = ticked(editForm);
      await patch(path`/v1/users/${username}`, body);
      await detail(view, username);
      note(view.querySelector('.message'), 'Saved.');
    });
  });

  const lifecycle = manage && !self ? h('div', { class: 'actions' },
    h('button', { type: 'button', id: 'toggle-user', onclick: () => act(async () => {
      await patch(path`/v1/users/${username}`, { disabled: user.status === 'active' });
      await detail(view, username);
    }) }, user.status === 'active' ? 'Disable' : 'Enable'),
    h('button', { type: 'button', id: 'delete-user', class: 'danger', onclick: () =>
      confirmDialog(`Delete user “${username}”?`, 'The user and all their tokens are removed.', 'Delete', async () => {
        await del(path`/v1/users/${username}`);
        go('users');
      }) }, 'Delete…')) : null;

  const accessRows = (user.access || []).map((a) => h('tr', { 'data-slug': a.client },
    h('th', { scope: 'row' }, h('a', { href: href('access', a.client) }, a.client)),
    h('td', {}, { full: 'Full access', read: 'Read only' }[a.level] || a.level), h('td', {}, a.private_data ? 'yes' : 'no')));

  const tokens = h('section', { class: 'card', 'aria-labelledby': 'tokens-title' });
  fill(view, h('p', {}, h('a', { href: href('users') }, '← All users')),
    h('h1', {}, user.display_name || username, ' ', h('span', { class: 'muted' }, `(${username})`)),
    h('dl', { class: 'facts' }, h('dt', {}, 'Status'), h('dd', {}, badge(user.status)),
      h('dt', {}, 'Home client'), h('dd', {}, user.home_client),
      h('dt', {}, 'Created'), h('dd', {}, when(user.created_at))),
    box, lifecycle, editForm,
    h('section', { class: 'card', 'aria-labelledby': 'access-title' }, h('h2', { id: 'access-title' }, 'Access'),
      accessRows.length ? table({ id: 'user-access' }, ['Client', 'Level', 'Private data'], accessRows)
        : h('p', {}, 'No access to any client you can see.'),
      h('p', { class: 'muted' }, 'Change access on the ', h('a', { href: href('access') }, 'Access'), ' page.')),
    tokens);
  if (self || manage) await drawTokens(tokens, username);
  else tokens.remove();
}

async function drawTokens(section, username) {
  const current = tokenLists();
  const list = await get(path`/v1/users/${username}/tokens`);
  if (!current()) return;
  const box = messageBox();
  const name = h('input', { id: 'token-name', required: true, maxlength: 100, autocomplete: 'off' });
  const days = h('input', { id: 'token-days', type: 'number', min: 1, max: 3650, inputmode: 'numeric' });
  const shown = h('div', { class: 'token-shown', 'aria-live': 'polite' });
  const form = h('form', { id: 'create-token-form', class: 'inline', novalidate: true },
    field('Token name', name), field('Expires in days (empty: never)', days),
    h('button', { type: 'submit', id: 'create-token', class: 'create' }, h('span', { 'aria-hidden': 'true' }, '+'), ' New token'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!name.value.trim()) return alert(box, 'Enter a name for the token.');
    try {
      const created = await post(path`/v1/users/${username}/tokens`,
        { name: name.value, expires_in_days: days.value ? Number(days.value) : undefined });
      await drawTokens(section, username);
      const value = h('input', { id: 'new-token', readonly: true, value: created.token, spellcheck: false,
        onfocus: (e) => e.target.select() });
      fill(section.querySelector('.token-shown'), h('div', { class: 'secret', role: 'status' },
        field(`New token “${created.name}”`, value),
        h('p', { class: 'warn' }, 'Copy it now (select it and press Ctrl+C / ⌘C): it will not be shown again.')));
      value.focus();
    } catch (error) {
      alert(box, error.message);
    }
  });
  const rows = list.map((t) => h('tr', { 'data-token': t.id },
    h('th', { scope: 'row' }, t.name), h('td', {}, when(t.created_at)), h('td', {}, when(t.expires_at)),
    h('td', {}, when(t.last_used_at)), h('td', {}, t.revoked_at ? `revoked ${when(t.revoked_at)}` : 'active'),
    h('td', {}, t.revoked_at ? null : h('button', { type: 'button', class: 'revoke-token danger',
      'aria-label': `Revoke token ${t.name}`, onclick: () => confirmDialog(`Revoke token “${t.name}”?`,
        session.me.token && session.me.token.id === t.id ? 'This is the token you signed in with.' : 'Programs using it stop working at once.',
        'Revoke', async () => {
          await del(path`/v1/users/${username}/tokens/${t.id}`);
          await drawTokens(section, username);
        }) }, 'Revoke'))));
  fill(section, h('h2', { id: 'tokens-title' }, 'API tokens'),
    rows.length ? table({ id: 'tokens' }, ['Name', 'Created', 'Expires', 'Last used', 'State', ''], rows) : h('p', {}, 'No tokens.'),
    form, box, shown);
}
