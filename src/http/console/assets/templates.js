// Templates (#/templates): the master templates (create, publish a new version, retract, sync state per client)
// and one client's templates: inherited or overridden, override (PUT) and revert (DELETE .../override).
// Template bodies are shown only as text in form controls, never rendered.

import { h, fill, field, table, messageBox, alert, note, badge, when, confirmDialog, showError, latest } from './dom.js';
import { get, post, put, del, path, all } from './api.js';
import { can, masterSlug, clientSelect } from './state.js';

export async function render(view, route) {
  const master = h('section', { 'aria-labelledby': 'master-templates-title' });
  const client = h('section', { 'aria-labelledby': 'client-templates-title' });
  fill(view, h('h1', {}, 'Templates'), master, client);
  const slug = masterSlug();
  await Promise.all([
    can('templates.read', slug) ? drawMaster(master, slug) : master.remove(),
    drawClient(client, route.args[0]),
  ]);
}

// Name, subject, HTML and text body; `prefix` names the ids (e.g. override-name, override-body, override-text).
function contentForm(prefix, template, readOnly) {
  const name = h('input', { id: `${prefix}-name`, required: true, maxlength: 200, value: template.name || '', readOnly });
  const subject = h('input', { id: `${prefix}-subject`, required: true, maxlength: 998, value: template.subject || '', readOnly });
  const html = h('textarea', { id: `${prefix}-body`, rows: 8, spellcheck: false, readOnly }, template.html_body || '');
  const text = h('textarea', { id: `${prefix}-text`, rows: 5, readOnly }, template.text_body || '');
  const fields = h('div', { class: 'content-fields' }, h('div', { class: 'grid' }, field('Name', name), field('Subject', subject)),
    field('HTML body', html), field('Text body', text));
  const value = () => ({ name: name.value, subject: subject.value, html_body: html.value, text_body: text.value });
  const check = () => (!name.value.trim() ? 'Enter a name.' : !subject.value.trim() ? 'Enter a subject.'
    : !html.value && !text.value ? 'Enter an HTML or a text body (or both).' : null);
  return { fields, value, check };
}

// Two refreshes can overlap (a retract, then a publish): the older one draws nothing.
const masters = latest();

async function drawMaster(section, master) {
  const current = masters();
  const templates = await all('/v1/templates');
  if (!current()) return;
  const manage = can('templates.manage', master);
  const box = messageBox();
  const editor = h('div');
  const redraw = (done) => drawMaster(section, master).then(() => done && note(section.querySelector('.message'), done))
    .catch(showError(section));
  const open = (t) => {
    const form = contentForm('tpl', t || {});
    const f = h('form', { id: 'template-form', class: 'card', novalidate: true },
      h('h3', {}, t ? `Publish a new version of “${t.name}”` : 'New master template'), form.fields, messageBox(),
      h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'save-template', class: 'primary' }, t ? 'Publish' : 'Create'),
        h('button', { type: 'button', onclick: () => fill(editor) }, 'Cancel')));
    f.addEventListener('submit', async (event) => {
      event.preventDefault();
      const problem = form.check();
      if (problem) return alert(f.querySelector('.message'), problem);
      try {
        const saved = t ? await put(path`/v1/templates/${t.id}`, form.value()) : await post('/v1/templates', form.value());
        redraw(`“${saved.name}” version ${saved.version} published; it is being synced to every client.`);
      } catch (error) {
        alert(f.querySelector('.message'), error.message);
      }
    });
    fill(editor, f);
    f.querySelector('input').focus();
  };
  const rows = templates.map((t) => {
    const sync = h('tr', { class: 'detail', hidden: true }, h('td', { colspan: 5 }));
    const loads = latest(); // shown, hidden and shown again: only the last answer is drawn
    const toggle = h('button', { type: 'button', class: 'show-sync', 'aria-expanded': 'false', onclick: async () => {
      const current = loads();
      sync.hidden = !sync.hidden;
      toggle.setAttribute('aria-expanded', String(!sync.hidden));
      if (!sync.hidden) await drawSync(sync.firstChild, t, current).catch(showError(sync.firstChild));
    } }, 'Sync state');
    return [h('tr', { 'data-template': t.id },
      h('th', { scope: 'row' }, t.name), h('td', {}, t.subject), h('td', {}, `v${t.version}`), h('td', {}, when(t.updated_at)),
      h('td', { class: 'buttons' }, toggle,
        manage ? h('button', { type: 'button', class: 'publish-template', onclick: () => open(t) }, 'New version') : null,
        manage ? h('button', { type: 'button', class: 'retract-template danger', onclick: () =>
          confirmDialog(`Retract “${t.name}”?`, 'It is removed from every client that has not overridden it.', 'Retract', async () => {
            await del(path`/v1/templates/${t.id}`);
            redraw(`“${t.name}” retracted.`);
          }) }, 'Retract') : null)), sync];
  });
  fill(section, h('div', { class: 'page-head' }, h('h2', { id: 'master-templates-title' }, 'Master templates'),
    manage ? h('button', { type: 'button', id: 'new-template', class: 'create', onclick: () => open() },
      h('span', { 'aria-hidden': 'true' }, '+'), ' New template') : null),
  box, editor,
  rows.length ? table({ id: 'master-templates' }, ['Name', 'Subject', 'Version', 'Updated', ''], rows.flat())
    : h('p', {}, 'No master templates yet.'));
}

async function drawSync(cell, t, current) {
  const report = await get(path`/v1/templates/${t.id}/sync`);
  if (!current()) return;
  fill(cell, table({ class: 'template-sync' }, ['Client', 'State', 'Synced version', 'Last error', 'Updated'],
    report.clients.map((c) => h('tr', { 'data-slug': c.client }, h('th', { scope: 'row' }, c.client),
      h('td', { class: 'status' }, badge(c.status)), h('td', {}, c.synced_version ?? '—'),
      h('td', {}, c.last_error || ''), h('td', {}, when(c.updated_at))))));
}

function state(t) {
  if (t.origin !== 'inherited') return 'local';
  if (t.overridden) return 'overridden';
  return t.available_version > t.master_version ? 'update pending' : 'inherited';
}

async function drawClient(section, wanted, openId) {
  const picker = clientSelect('templates-client', 'templates.read', wanted,
    (slug) => drawClient(section, slug).catch(showError(section)));
  const slug = picker.control.value;
  const body = h('div');
  fill(section, h('h2', { id: 'client-templates-title' }, 'A client’s templates'), picker.element, body);
  if (!slug) return fill(body, h('p', {}, 'No client to show.'));
  const templates = await all(path`/v1/clients/${slug}/templates`);
  const manage = can('templates.manage', slug);
  const editor = h('div');
  const rows = templates.map((t) => h('tr', { 'data-template': t.id, class: t.id === openId ? 'selected' : null },
    h('th', { scope: 'row' }, t.name), h('td', {}, t.subject), h('td', { class: 'status' }, badge(state(t))),
    h('td', {}, t.master_version ? `v${t.master_version}` : '—', t.available_version > t.master_version ? ` (v${t.available_version} available)` : ''),
    h('td', {}, h('button', { type: 'button', class: 'open-template', onclick: () => openClient(editor, section, slug, t, manage) },
      manage ? 'Edit' : 'View'))));
  fill(body, rows.length ? table({ id: 'client-templates' }, ['Name', 'Subject', 'State', 'Master version', ''], rows)
    : h('p', {}, 'No templates.'), editor);
  const again = templates.find((t) => t.id === openId);
  if (again) openClient(editor, section, slug, again, manage);
}

// The override editor for an inherited template (or the editor of a local one).
function openClient(editor, section, slug, t, manage) {
  const form = contentForm('override', t, !manage);
  const box = messageBox();
  const inherited = t.origin === 'inherited';
  const reload = (message) => drawClient(section, slug, t.id)
    .then(() => note(section.querySelector('#override-form .message'), message)).catch(showError(section));
  const f = h('form', { id: 'override-form', class: 'card', novalidate: true },
    h('h3', {}, `${t.name} `, h('span', { class: 'muted' }, `in ${slug} — ${state(t)}`)),
    inherited && !t.overridden && manage
      ? h('p', { class: 'muted' }, 'Saving overrides the master’s template in this client; later master versions are not applied until you revert.')
      : null,
    form.fields, box,
    manage ? h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'save-override', class: 'primary' }, inherited ? 'Save override' : 'Save'),
      inherited && t.overridden ? h('button', { type: 'button', id: 'revert-override', onclick: async () => {
        try {
          await del(path`/v1/clients/${slug}/templates/${t.id}/override`);
          reload('Reverted to the master’s version.');
        } catch (error) {
          alert(box, error.message);
        }
      } }, 'Revert to master') : null) : null);
  f.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!manage) return;
    const problem = form.check();
    if (problem) return alert(box, problem);
    try {
      await put(path`/v1/clients/${slug}/templates/${t.id}`, form.value());
      reload(inherited ? 'Override saved.' : 'Saved.');
    } catch (error) {
      alert(box, error.message);
    }
  });
  fill(editor, f);
  f.querySelector('input').focus();
}
