// A tiny DOM builder. Text always goes in as text nodes: API data never reaches innerHTML.

// h('button', {class: 'primary', onclick: fn, 'data-slug': s, disabled: true}, 'Save')
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'for') el.htmlFor = value;
    else if (key in el && !key.includes('-')) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replaces an element's content.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// The latest of overlapping loads into one place: `const loads = latest();` once per place, then
// `const current = loads();` before the awaits and `if (!current()) return;` after each. A load that a later one
// has overtaken (two quick changes of a select, a refresh after a save) draws nothing, so an older answer never
// replaces a newer one.
export function latest() {
  let started = 0;
  return () => {
    const mine = ++started;
    return () => mine === started;
  };
}

let ids = 0;
// A labelled control: h('input'...) gets an id (unless it has one) and a <label for>.
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++ids}`;
  return h('div', { class: 'field' },
    h('label', { for: control.id }, label), control,
    hint ? h('small', { class: 'hint' }, hint) : null);
}

// A <select> from [value, text] pairs (or plain strings).
export function select(attrs, options, selected) {
  return h('select', attrs, options.map((o) => {
    const [value, text] = Array.isArray(o) ? o : [o, o];
    return h('option', { value, selected: value === selected }, text);
  }));
}

// A table in a horizontally scrolling wrapper.
export function table(attrs, headers, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows)));
}

// A message area for a form: alert(box, message) shows an error, note(box, message) a success.
export function messageBox() {
  return h('div', { class: 'message', 'aria-live': 'polite' });
}
export function alert(box, message) {
  fill(box, h('p', { class: 'error', role: 'alert' }, message));
}
export function note(box, message) {
  fill(box, message ? h('p', { class: 'ok' }, message) : null);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function badge(status) {
  return h('span', { class: `badge s-${String(status).replace(/[^a-z_]/g, '')}` }, status);
}

// A list read page by page: load(cursor) → {items, next_cursor}; add(items) shows them. next() reads the first
// page; the "Show more" button (hidden on the last page) reads the following ones.
export function pager(load, add, box) {
  let cursor = null;
  const button = h('button', { type: 'button', class: 'more', hidden: true }, 'Show more');
  const next = async () => {
    button.disabled = true;
    try {
      const page = await load(cursor);
      add(page.items);
      cursor = page.next_cursor;
      button.hidden = !cursor;
    } finally {
      button.disabled = false;
    }
  };
  button.addEventListener('click', () => next().catch((error) => alert(box, error.message)));
  return { button, next };
}

// A modal confirmation: resolves true when `action` is clicked. action() may throw; its message is shown and the
// dialog stays open.
export function confirmDialog(title, text, label, action, extra) {
  const box = messageBox();
  const button = h('button', { type: 'button', id: 'confirm', class: 'danger' }, label);
  const dialog = h('dialog', { class: 'card', 'aria-labelledby': 'dialog-title' },
    h('form', { method: 'dialog' }, h('h2', { id: 'dialog-title' }, title), h('p', {}, text), extra || null, box,
      h('div', { class: 'actions' }, button, h('button', { type: 'submit', value: 'cancel', id: 'cancel' }, 'Cancel'))));
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await action();
      dialog.close();
    } catch (error) {
      alert(box, error.message);
      button.disabled = false;
    }
  });
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

// A catch handler that shows an error under `el` (a 401 has sent the user to the sign-in form already).
export function showError(el) {
  return (error) => {
    if (error.status !== 401) el.append(h('p', { class: 'error', role: 'alert' }, error.message));
  };
}
