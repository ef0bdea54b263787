// Boot, session, router, header, navigation and the client filter.

import { h, fill, field, alert, showError, latest } from './dom.js';
import { api, get, all, setCsrf, whenUnauthorized, withQuery } from './api.js';
import { session, can, canSomewhere, tree, masterSlug } from './state.js';
import * as overview from './overview.js';
import * as clients from './clients.js';
import * as access from './access.js';
import * as users from './users.js';
import * as roles from './roles.js';
import * as fields from './fields.js';
import * as templates from './templates.js';
import * as recipients from './recipients.js';
import * as audit from './audit.js';
import * as servers from './servers.js';

// Each page: its title, whether the caller may open it, and render(view, route).
const pages = {
  overview: { title: 'Overview', page: overview, allowed: () => can('clients.read') },
  clients: { title: 'Clients', page: clients, allowed: () => can('clients.read') },
  access: { title: 'Access', page: access, allowed: () => can('users.read') },
  users: { title: 'Users', page: users, allowed: () => can('users.read') },
  roles: { title: 'Roles', page: roles, allowed: () => can('users.read') },
  fields: { title: 'Fields', page: fields, allowed: () => canSomewhere('fields.read') },
  templates: { title: 'Templates', page: templates, allowed: () => canSomewhere('templates.read') },
  recipients: { title: 'Recipients', page: recipients, allowed: () => canSomewhere('recipients.read') },
  audit: { title: 'Audit', page: audit, allowed: () => can('audit.read') },
  servers: { title: 'Servers', page: servers, allowed: () => can('servers.manage', masterSlug()) },
};

const $ = (id) => document.getElementById(id);
const main = $('main');
let current = { page: 'overview', args: [] }; // the route shown (the skip link's #main is not a route)

// #/page/arg?client=slug&... → {page, args, query}
function parseHash() {
  const [pathPart, queryPart = ''] = location.hash.slice(2).split('?');
  const [page, ...args] = pathPart.split('/').map(decodeURIComponent);
  return { page: page || 'overview', args, query: new URLSearchParams(queryPart) };
}

// A link to a page that keeps the client filter.
export function href(page, ...args) {
  const base = `#/${[page, ...args].map(encodeURIComponent).join('/')}`;
  return withQuery(base, { client: session.filter });
}

export function go(page, ...args) {
  location.hash = href(page, ...args);
}

function renderRoute() {
  if (!session.me || !location.hash.startsWith('#/')) {
    if (session.me && !location.hash) go('overview');
    return;
  }
  const route = parseHash();
  current = route;
  const slug = route.query.get('client') || '';
  session.filter = session.clients.some((c) => c.slug === slug) ? slug : '';
  $('client-filter').value = session.filter;
  renderNav(route.page);
  const entry = pages[route.page];
  const view = h('div', { class: 'view' });
  fill(main, view);
  if (!entry || !entry.allowed()) {
    fill(view, h('h1', {}, 'Not available'), h('p', {}, 'This page does not exist or you may not open it.'));
    return;
  }
  document.title = `${entry.title} · mandant console`;
  entry.page.render(view, route).catch((error) => {
    if (!view.querySelector('h1')) view.prepend(h('h1', {}, entry.title));
    showError(view)(error);
  });
}

function renderNav(page) {
  fill($('nav'), h('ul', {}, Object.entries(pages).filter(([, p]) => p.allowed()).map(([name, p]) =>
    h('li', {}, h('a', { href: href(name), 'aria-current': name === page ? 'page' : null }, p.title)))));
}

function renderFilter() {
  fill($('client-filter'), h('option', { value: '' }, 'All clients'),
    tree().map(({ client: c, depth }) =>
      h('option', { value: c.slug }, `${'\u00a0\u00a0'.repeat(depth)}${c.name} (${c.slug})`)));
  $('client-filter').value = session.filter;
}

// Reloads the visible clients (after a create, rename or delete) and the filter's options. Of two overlapping
// reloads (an operation ending while a rename is saved), the later one's answer is kept.
const reloads = latest();
export async function reloadClients() {
  const current = reloads();
  const clients = can('clients.read') ? await all('/v1/clients') : [];
  if (!current()) return;
  session.clients = clients;
  renderFilter();
}

// Signed in: `signedIn` is the session (POST or GET /v1/session), whose CSRF token every change sends.
async function start(signedIn) {
  setCsrf(signedIn.csrf_token);
  session.me = await get('/v1/me');
  await reloadClients();
  fill($('user-name'), session.me.display_name || session.me.username);
  $('user-name').title = session.me.username;
  $('session').hidden = false;
  $('nav').hidden = false;
  if (location.hash.startsWith('#/')) renderRoute();
  else go('overview');
}

function signedOut(message) {
  setCsrf(null);
  Object.assign(session, { me: null, clients: [], filter: '' });
  $('session').hidden = true;
  $('nav').hidden = true;
  fill($('nav'));
  document.title = 'Sign in · mandant console';
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: false });
  const button = h('button', { type: 'submit', id: 'sign-in', class: 'primary' }, 'Sign in');
  const box = h('div', { class: 'message', 'aria-live': 'polite' });
  const form = h('form', { class: 'card signin', novalidate: true }, h('h1', {}, 'Sign in'),
    h('p', {}, 'Sign in with your API token. It is used once to open a session and is not kept.'),
    field('API token', token), box, h('div', { class: 'actions' }, button));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = token.value.trim();
    token.value = '';
    if (!value) return alert(box, 'Enter your API token.');
    button.disabled = true;
    try {
      await start(await api('POST', '/v1/session', { token: value }));
    } catch (error) {
      alert(box, error.status === 401 ? 'This token is not valid (or its user is disabled).' : error.message);
      token.focus();
    } finally {
      button.disabled = false;
    }
  });
  fill(main, form);
  if (message) alert(box, message);
  token.focus();
}

async function signOut() {
  let message = null;
  try {
    await api('DELETE', '/v1/session');
  } catch (error) {
    if (error.status !== 401) message = `The server did not confirm the sign-out: ${error.message}`;
  }
  signedOut(message);
}

async function boot() {
  whenUnauthorized(() => { if (session.me) signedOut('Your session has ended. Please sign in again.'); });
  $('sign-out').addEventListener('click', signOut);
  $('client-filter').addEventListener('change', (event) => {
    session.filter = event.target.value;
    go(current.page, ...current.args);
  });
  window.addEventListener('hashchange', renderRoute);
  let signedIn;
  try {
    signedIn = await api('GET', '/v1/session');
  } catch (error) {
    return signedOut(error.status === 401 ? null : error.message);
  }
  await start(signedIn).catch((error) => signedOut(error.message));
}

boot();
