// Fields (#/fields): the central fields with how far each has reached the clients, and one client's fields
// (standard, central and its own) with their apply status; create and delete where permitted.

import { h, fill, field, select, table, messageBox, alert, note, badge, confirmDialog, showError, latest } from './dom.js';
import { get, post, patch, del, path, all } from './api.js';
import { can, masterSlug, clientSelect } from './state.js';

const NAME = /^[a-z][a-z0-9_]{2,62}$/;
const TYPES = ['text', 'integer', 'number', 'boolean', 'date', 'timestamp'];

export async function render(view, route) {
  const central = h('section', { 'aria-labelledby': 'central-title' });
  const own = h('section', { 'aria-labelledby': 'client-fields-title' });
  fill(view, h('h1', {}, 'Fields'), central, own);
  const master = masterSlug();
  await Promise.all([
    can('fields.read', master) ? drawCentral(central, master) : central.remove(),
    drawClient(own, route.args[0]),
  ]);
}

// Two refreshes can overlap (a delete, then another): the older one draws nothing.
const centrals = latest();

async function drawCentral(section, master) {
  const current = centrals();
  const names = (await all('/v1/fields')).map((f) => f.name);
  if (!current()) return;
  const fields = await Promise.all(names.map((n) => get(path`/v1/fields/${n}`)));
  if (!current()) return;
  const manage = can('fields.manage', master);
  const box = messageBox();
  const redraw = () => drawCentral(section, master).catch((error) => alert(box, error.message));
  const rows = fields.map((f) => h('tr', { 'data-field': f.name },
    ...describe(f), h('td', { class: 'propagation' }, propagation(f.propagation)),
    h('td', {}, manage ? h('button', { type: 'button', class: 'delete-field danger', 'aria-label': `Delete central field ${f.name}`,
      onclick: () => confirmDialog(`Delete central field “${f.name}”?`,
        'Its column and every value in it are dropped in every client.', 'Delete', async () => {
          await del(path`/v1/fields/${f.name}`);
          redraw();
        }) }, 'Delete') : null)));
  fill(section, h('h2', { id: 'central-title' }, 'Central fields'),
    h('p', { class: 'muted' }, 'Defined on the master, inherited by every client, which cannot drop or change them.'),
    rows.length ? table({ id: 'central-fields' }, ['Name', 'Type', 'Required', 'Default', 'Personal', 'Reached clients', ''], rows)
      : h('p', {}, 'No central fields yet.'),
    box,
    manage ? fieldForm('central', async (body) => {
      const created = await post('/v1/fields', body);
      await redraw();
      follow(section, created.name);
    }) : null);
}

// Refreshes a new central field's propagation every second until no client is pending.
async function follow(section, name) {
  for (;;) {
    const f = await get(path`/v1/fields/${name}`);
    const cell = section.querySelector(`tr[data-field="${CSS.escape(name)}"] .propagation`);
    if (!cell || !section.isConnected) return;
    fill(cell, propagation(f.propagation));
    if (!f.propagation || f.propagation.pending === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function propagation(p) {
  if (!p) return '—';
  return [`${p.applied} applied`, p.pending ? `, ${p.pending} pending` : '', p.failed ? h('span', { class: 'error' }, `, ${p.failed} failed`) : '',
    p.failing.length ? h('ul', { class: 'failing' }, p.failing.map((c) => h('li', {}, `${c.client}: ${c.error || 'failed'}`))) : ''];
}

function describe(f) {
  return [h('th', { scope: 'row' }, h('code', {}, f.name)),
    h('td', {}, f.type, f.length ? ` (${f.length})` : ''), h('td', {}, f.required ? 'yes' : 'no'),
    h('td', {}, f.default === null || f.default === undefined ? '—' : JSON.stringify(f.default)),
    h('td', {}, f.personal ? 'yes' : 'no')];
}

async function drawClient(section, wanted) {
  const picker = clientSelect('fields-client', 'fields.read', wanted,
    (slug) => drawClient(section, slug).catch(showError(section)));
  const slug = picker.control.value;
  const list = h('div');
  fill(section, h('h2', { id: 'client-fields-title' }, 'A client’s fields'), picker.element, list);
  if (!slug) return fill(list, h('p', {}, 'No client to show.'));
  const fields = await all(path`/v1/clients/${slug}/fields`);
  const manage = can('fields.manage', slug);
  const box = messageBox();
  const redraw = () => drawClient(section, slug).catch((error) => alert(box, error.message));
  const rows = fields.map((f) => h('tr', { 'data-field': f.name },
    ...describe(f), h('td', {}, f.origin),
    h('td', { class: 'status' }, badge(f.status || '—'), f.last_error ? h('span', { class: 'error' }, ` ${f.last_error}`) : null),
    h('td', {}, manage && f.origin === 'client' ? [
      h('button', { type: 'button', class: 'change-field', 'aria-label': `Change field ${f.name} of ${slug}`,
        onclick: () => fill(editor, changeForm(slug, f, redraw)) }, 'Change'), ' ',
      h('button', { type: 'button', class: 'delete-field danger',
        'aria-label': `Delete field ${f.name} of ${slug}`, onclick: () => confirmDialog(`Delete field “${f.name}” of ${slug}?`,
          'Its column and every value in it are dropped.', 'Delete', async () => {
            await del(path`/v1/clients/${slug}/fields/${f.name}`);
            redraw();
          }) }, 'Delete')] : null)));
  const editor = h('div');
  fill(list, table({ id: 'client-fields' }, ['Name', 'Type', 'Required', 'Default', 'Personal', 'Origin', 'Status', ''], rows),
    editor, box,
    manage ? fieldForm('client', async (body) => {
      await post(path`/v1/clients/${slug}/fields`, body);
      await redraw();
      note(section.querySelector('.message'), `Field ${body.name} created.`);
    }) : null);
}

// The create form; `save(body)` posts it. The input stays when the API refuses it, with its message.
function fieldForm(prefix, save) {
  const name = h('input', { id: `${prefix}-field-name`, required: true, pattern: NAME.source, autocomplete: 'off', spellcheck: false });
  const type = select({ id: `${prefix}-field-type` }, TYPES, 'text');
  const length = h('input', { id: `${prefix}-field-length`, type: 'number', min: 1, max: 4000, placeholder: '255' });
  const required = h('input', { type: 'checkbox', id: `${prefix}-field-required` });
  const personal = h('input', { type: 'checkbox', id: `${prefix}-field-personal` });
  const fallback = h('input', { id: `${prefix}-field-default`, autocomplete: 'off' });
  const lengthField = field('Length', length);
  type.addEventListener('change', () => { lengthField.hidden = type.value !== 'text'; });
  const box = messageBox();
  const form = h('form', { id: `${prefix}-field-form`, class: 'card', novalidate: true },
    h('h3', {}, prefix === 'central' ? 'New central field' : 'New field for this client'),
    h('div', { class: 'grid' }, field('Name', name, 'a–z, 0–9, “_”; 3–63 characters, starting with a letter.'),
      field('Type', type), lengthField, field('Default', fallback, 'Needed when required; of the field’s type.')),
    h('div', { class: 'check' }, required, h('label', { for: required.id }, 'Required')),
    h('div', { class: 'check' }, personal, h('label', { for: personal.id }, 'Personal data (masked without “private data”)')),
    box, h('div', { class: 'actions' }, h('button', { type: 'submit', id: `create-${prefix}-field`, class: 'create' },
      h('span', { 'aria-hidden': 'true' }, '+'), ' Create field')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!NAME.test(name.value)) return alert(box, 'The name must match ^[a-z][a-z0-9_]{2,62}$.');
    if (/^(sys_|mandant_)/.test(name.value)) return alert(box, 'Names starting with sys_ or mandant_ are reserved.');
    const body = { name: name.value, type: type.value, required: required.checked, personal: personal.checked };
    if (type.value === 'text' && length.value) body.length = Number(length.value);
    if (fallback.value !== '') {
      const v = fallback.value;
      body.default = type.value === 'integer' || type.value === 'number' ? Number(v)
        : type.value === 'boolean' ? v === 'true' : v;
    }
    try {
      await save(body);
    } catch (error) {
      alert(box, error.message);
    }
  });
  return form;
}

// Changes a client's own field: a text field's length (never shorter) and whether it is personal data.
function changeForm(slug, f, redraw) {
  const box = messageBox();
  const length = f.type === 'text'
    ? h('input', { id: 'change-field-length', type: 'number', min: f.length || 1, max: 4000, value: f.length || '' })
    : null;
  const personal = h('input', { type: 'checkbox', id: 'change-field-personal', checked: !!f.personal });
  const form = h('form', { id: 'change-field-form', class: 'card', novalidate: true },
    h('h3', {}, 'Change ', h('code', {}, f.name), ` of ${slug}`),
    length ? field('Length (characters; never less than now)', length) : null,
    h('div', { class: 'check' }, personal, h('label', { for: personal.id }, 'Personal data (masked without “private data”)')),
    box, h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'save-field', class: 'primary' }, 'Save')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = { personal: personal.checked };
    if (length && length.value !== String(f.length || '')) {
      const n = Number(length.value);
      if (!Number.isInteger(n) || n < 1 || n > 4000) return alert(box, 'The length is a whole number from 1 to 4000.');
      body.length = n;
    }
    try {
      await patch(path`/v1/clients/${slug}/fields/${f.name}`, body);
      await redraw();
    } catch (error) {
      alert(box, error.message);
    }
  });
  return form;
}
