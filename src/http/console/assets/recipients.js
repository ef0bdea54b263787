// Recipients (#/recipients): one client's recipients, page by page, exactly as the API returns them: a personal
// value withheld from a user without "private data" is null and listed in `_masked`, and is shown as masked.

import { h, fill, field, messageBox, pager, showError, latest } from './dom.js';
import { get, path, withQuery } from './api.js';
import { clientSelect } from './state.js';

const FIRST = ['id', 'email', 'first_name', 'last_name', 'gender'];
const LAST = ['created_at', 'updated_at'];

export async function render(view, route) {
  const body = h('div');
  const picker = clientSelect('recipients-client', 'recipients.read', route.args[0],
    () => draw(body, picker.control.value).catch(showError(body)));
  fill(view, h('h1', {}, 'Recipients'), picker.element, body);
  if (!picker.control.value) return fill(body, h('p', {}, 'No client to show.'));
  await draw(body, picker.control.value);
}

// Another client or filter can be chosen while a page loads: only the last choice's answer (or error) is shown.
const draws = latest();

async function draw(body, slug, filter = { name: '', value: '' }) {
  const current = draws();
  const box = messageBox();
  const filterName = h('input', { id: 'filter-field', value: filter.name, autocomplete: 'off', spellcheck: false });
  const filterValue = h('input', { id: 'filter-value', value: filter.value, autocomplete: 'off' });
  const search = h('form', { class: 'inline', role: 'search', novalidate: true },
    field('Field', filterName), field('Value', filterValue),
    h('button', { type: 'submit', id: 'filter-recipients' }, 'Filter'));
  search.addEventListener('submit', (event) => {
    event.preventDefault();
    draw(body, slug, { name: filterName.value.trim(), value: filterValue.value }).catch(showError(body));
  });
  const head = h('thead');
  const tbody = h('tbody');
  let columns = null;
  const list = pager((cursor) => get(withQuery(path`/v1/clients/${slug}/recipients`,
    { ...(filter.name ? { [filter.name]: filter.value } : {}), cursor })), (items) => {
    if (!columns) {
      const keys = new Set(items.flatMap((r) => Object.keys(r)));
      const custom = [...keys].filter((k) => !FIRST.includes(k) && !LAST.includes(k) && k !== '_masked').sort();
      columns = [...FIRST, ...custom, ...LAST];
      fill(head, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c))));
    }
    tbody.append(...items.map((r) => {
      const masked = r._masked || [];
      return h('tr', { 'data-id': r.id }, columns.map((c) => masked.includes(c)
        ? h('td', { class: 'masked', title: 'Withheld: no private-data access' }, 'masked')
        : h('td', {}, show(r[c]))));
    }));
  }, box);
  fill(body, search, h('div', { class: 'table-wrap' }, h('table', { id: 'recipients' }, head, tbody)), list.button, box);
  await list.next().catch((error) => { if (current()) throw error; });
  if (current() && !tbody.children.length) body.insertBefore(h('p', {}, 'No recipients.'), list.button);
}

function show(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'string' ? value : JSON.stringify(value);
}
