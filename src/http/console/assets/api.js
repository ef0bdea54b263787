// The fetch wrapper: JSON in and out, the session cookie, the CSRF header on every change, API errors as
// exceptions carrying the server's message, and any 401 sent back to the sign-in form.

let csrf = null;
let onUnauthorized = () => {};

export function setCsrf(token) { csrf = token; }
export function whenUnauthorized(handler) { onUnauthorized = handler; }

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The server answered ${status}.`);
    this.status = status;
    this.code = error.code || 'http_error';
    this.body = body;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { error: { code: 'network', message: 'The server cannot be reached.' } });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401 && path !== '/v1/session') onUnauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const put = (path, body) => api('PUT', path, body);
export const patch = (path, body) => api('PATCH', path, body);
export const del = (path) => api('DELETE', path);

// A path with encoded segments and a query string without empty values:
// path`/v1/clients/${slug}/fields` and withQuery('/v1/users', {client, cursor}).
export function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ''), '');
}
export function withQuery(base, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `${base}?${s}` : base;
}

// Every item of a paginated list.
export async function all(base, query = {}) {
  const items = [];
  let cursor = null;
  do {
    const page = await get(withQuery(base, { ...query, limit: 1000, cursor }));
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

// Polls GET /v1/operations/{id} every second, reporting each state, until it succeeds or fails.
export async function follow(operationId, onState) {
  for (;;) {
    const op = await get(path`/v1/operations/${operationId}`);
    onState(op);
    if (op.status === 'succeeded' || op.status === 'failed') return op;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
