// Servers (#/servers): the database servers with their capacity and use; drain (move every client off, with the
// drain's progress) and cancel a drain.

import { h, fill, table, bytes, badge, confirmDialog, messageBox, alert, latest } from './dom.js';
import { get, post, path, follow } from './api.js';

export async function render(view) {
  const progress = h('div', { class: 'progress', id: 'server-progress', 'aria-live': 'polite' });
  const box = messageBox();
  const list = h('div');
  fill(view, h('h1', {}, 'Database servers'), progress, box, list);
  // Refreshes of this page's list overlap (a drain ending while another is cancelled): the older one draws nothing.
  // One per page, so a drain still watched on a page left behind cannot cancel this page's draw.
  await draw(list, progress, box, latest());
}

async function draw(list, progress, box, draws) {
  const current = draws();
  const servers = await get('/v1/servers');
  if (!current()) return;
  const redraw = () => draw(list, progress, box, draws).catch((error) => alert(box, error.message));
  const watch = async (operation, name) => {
    const line = h('p', {}, `Draining ${name}: queued`);
    progress.append(line);
    const op = await follow(operation, (s) => fill(line, `Draining ${name}: ${s.status}`, s.step ? ` (step: ${s.step})` : '',
      s.result ? ` — ${['moved', 'running', 'failed', 'left'].map((k) => `${k}: ${s.result[k] ?? 0}`).join(', ')}` : '',
      s.last_error ? h('span', { class: 'error' }, ` — ${s.last_error}`) : ''));
    line.className = op.status === 'succeeded' ? 'ok' : 'error';
    redraw();
  };
  fill(list, table({ id: 'servers' }, ['Server', 'Policy', 'Zone', 'Databases', 'Size', 'Connections', 'Live moves', 'Template', ''],
    servers.map((s) => h('tr', { 'data-server': s.name },
      h('th', { scope: 'row' }, s.name, s.url ? h('div', { class: 'muted' }, s.url) : null),
      h('td', { class: 'status' }, badge(s.policy)), h('td', {}, s.zone || '—'),
      h('td', {}, `${s.databases} / ${s.max_databases}`),
      h('td', {}, bytes(s.bytes), s.max_bytes ? ` / ${bytes(s.max_bytes)}` : ''),
      h('td', {}, `${s.budget_in_use} / ${s.budget}`),
      h('td', {}, s.live_moves_possible === null ? '—' : s.live_moves_possible ? 'yes' : 'no'),
      h('td', {}, `v${s.template_version}`),
      h('td', {}, s.policy === 'draining'
        ? h('button', { type: 'button', class: 'cancel-drain', onclick: async () => {
          try {
            await post(path`/v1/servers/${s.name}/drain/cancel`);
            redraw();
          } catch (error) {
            alert(box, error.message);
          }
        } }, 'Cancel drain')
        : h('button', { type: 'button', class: 'drain danger', onclick: () => confirmDialog(`Drain server “${s.name}”?`,
          'Every client on it is moved live to other servers; it takes no new clients.', 'Drain', async () => {
            const started = await post(path`/v1/servers/${s.name}/drain`);
            redraw();
            if (started.operation) watch(started.operation, s.name).catch((error) => alert(box, error.message));
          }) }, 'Drain…'))))));
}
