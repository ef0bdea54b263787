// Roles (#/roles): the roles with their permissions; create, replace and delete custom roles (roles.manage).

import { h, fill, field, table, messageBox, alert, note, confirmDialog, latest } from './dom.js';
import { get, post, put, del, path } from './api.js';
import { can, masterSlug } from './state.js';

const NAME = /^[a-z][a-z0-9-]{1,39}$/;

// A render that a later one overtook (a save, then a delete) draws nothing.
const renders = latest();

// `done`: a success message to show (after a change).
export async function render(view, route, done) {
  const current = renders();
  const [roles, permissions] = await Promise.all([get('/v1/roles'), get('/v1/permissions')]);
  if (!current()) return;
  const manage = can('roles.manage', masterSlug());
  const editor = h('div');
  if (done) note(editor.appendChild(messageBox()), done);
  const rows = roles.map((r) => h('tr', { 'data-role': r.name },
    h('th', { scope: 'row' }, r.name, r.builtin ? h('span', { class: 'muted' }, ' (built-in)') : null),
    h('td', {}, r.description), h('td', { class: 'perms' }, r.permissions.join(' ')),
    h('td', {}, r.users ?? '—'),
    h('td', {}, manage && !r.builtin ? [
      h('button', { type: 'button', class: 'edit-role', onclick: () => form(view, editor, permissions, r) }, 'Edit'), ' ',
      h('button', { type: 'button', class: 'delete-role danger', onclick: () =>
        confirmDialog(`Delete role “${r.name}”?`, 'Users holding it lose its permissions.', 'Delete', async () => {
          await del(path`/v1/roles/${r.name}`);
          await render(view, null, `Role ${r.name} deleted.`);
        }) }, 'Delete'),
    ] : null)));
  fill(view, h('div', { class: 'page-head' }, h('h1', {}, 'Roles'),
    manage ? h('button', { type: 'button', id: 'new-role', class: 'create', onclick: () => form(view, editor, permissions) },
      h('span', { 'aria-hidden': 'true' }, '+'), ' New role') : null),
    editor,
    table({ id: 'roles' }, ['Role', 'Description', 'Permissions', 'Users', ''], rows),
    h('h2', {}, 'Permissions'),
    table({ id: 'permissions' }, ['Permission', 'Meaning', 'With read-only access'], permissions.map((p) =>
      h('tr', {}, h('th', { scope: 'row' }, h('code', {}, p.name)), h('td', {}, p.description), h('td', {}, p.read ? 'yes' : 'no')))));
}

// The create form (no role) or the replace form (a role).
function form(view, editor, permissions, role) {
  const name = h('input', { id: 'role-name', required: true, pattern: NAME.source, value: role ? role.name : '',
    disabled: !!role, autocomplete: 'off' });
  const description = h('input', { id: 'role-description', maxlength: 500, value: role ? role.description : '' });
  const box = messageBox();
  const checks = h('fieldset', { class: 'checks' }, h('legend', {}, 'Permissions'), permissions.map((p) => {
    const id = `perm-${p.name}`;
    return h('div', { class: 'check' },
      h('input', { type: 'checkbox', id, name: 'permission', value: p.name, checked: role && role.permissions.includes(p.name) }),
      h('label', { for: id, title: p.description }, p.name));
  }));
  const f = h('form', { id: 'role-form', class: 'card', novalidate: true },
    h('h2', {}, role ? `Edit role “${role.name}”` : 'New role'),
    h('div', { class: 'grid' }, field('Name', name), field('Description', description)), checks, box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'save-role', class: 'primary' }, role ? 'Save' : 'Create role'),
      h('button', { type: 'button', onclick: () => fill(editor) }, 'Cancel')));
  f.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!NAME.test(name.value)) return alert(box, 'The name must match ^[a-z][a-z0-9-]{1,39}$.');
    const body = { description: description.value,
      permissions: [...checks.querySelectorAll('input:checked')].map((i) => i.value) };
    try {
      if (role) await put(path`/v1/roles/${role.name}`, body);
      else await post('/v1/roles', { name: name.value, ...body });
      await render(view, null, `Role ${role ? role.name : name.value} saved.`);
    } catch (error) {
      alert(box, error.message);
    }
  });
  fill(editor, f);
  (role ? description : name).focus();
}
