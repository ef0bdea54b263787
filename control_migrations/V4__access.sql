-- Users, roles, rights, per-client access, API tokens and the audit log (DESIGN.md §6, issue #7).
-- One central rights concept: roles are sets of permission tokens, defined once and usable for users of every
-- client; access is per user and client (full | read; no row = none, invisible) plus the private-data right.

CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Unique across all clients (one login namespace for the whole installation).
    username       text NOT NULL UNIQUE CHECK (username ~ '^[a-z][a-z0-9._-]{1,62}$'),
    display_name   text NOT NULL DEFAULT '' CHECK (char_length(display_name) <= 200),
    -- The client the user belongs to (who may manage the user). Grants nothing by itself.
    home_client_id uuid NOT NULL REFERENCES clients (id),
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_home_client ON users (home_client_id);

CREATE TABLE roles (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{1,39}$'),
    description text NOT NULL DEFAULT '' CHECK (char_length(description) <= 500),
    -- Built-in roles are defined by mandant and cannot be changed or deleted.
    builtin     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Permission tokens are validated by the code (src/access.rs), which knows the current list.
CREATE TABLE role_permissions (
    role       text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission text NOT NULL,
    PRIMARY KEY (role, permission)
);

-- A role in use cannot be deleted (no cascade): take it from its users first.
CREATE TABLE user_roles (
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role    text NOT NULL REFERENCES roles (name),
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_role ON user_roles (role);

CREATE TABLE client_access (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id    uuid NOT NULL REFERENCES clients (id),
    level        text NOT NULL CHECK (level IN ('full', 'read')),
    private_data boolean NOT NULL DEFAULT false,
    granted_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX client_access_client ON client_access (client_id);

-- Bearer tokens: only the SHA-256 of the token is stored (tokens are 256-bit random, so a fast hash is enough);
-- the token itself is shown once, in the response that creates it.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    hash         bytea NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    -- Updated at most once a minute per token (not on every request).
    last_used_at timestamptz,
    revoked_at   timestamptz,
    -- Who minted it for the user through the API, if not the user itself (NULL: itself, the bootstrap or the
    -- CLI). Such a token lives only while its minter could still act for the user (dominates it, src/access): it
    -- is revoked when a change of either's rights ends that, or when the minter is disabled or deleted.
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
CREATE INDEX api_tokens_created_by ON api_tokens (created_by) WHERE created_by IS NOT NULL;

-- Every mutating API call: who, when, on which client, what, on what, and how it ended. Never secrets.
-- user_id and client_id carry no foreign keys: the log outlives deleted users; names are kept as they were.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    user_id     uuid,
    username    text,
    client_id   uuid,
    client_slug text,
    -- `METHOD /route/{template}`, e.g. `POST /v1/clients/{slug}/recipients`.
    action      text NOT NULL,
    -- The concrete path the call addressed (ids, usernames; never a token).
    target      text NOT NULL,
    -- `succeeded` (2xx), `denied` (401/403/404 from the access check), `failed` (any other status).
    outcome     text NOT NULL CHECK (outcome IN ('succeeded', 'denied', 'failed')),
    status      smallint NOT NULL,
    request_id  text,
    detail      jsonb
);
CREATE INDEX audit_log_client ON audit_log (client_id, id);
CREATE INDEX audit_log_user ON audit_log (user_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- The built-in roles (DESIGN.md §6). The code re-asserts their permissions at start (ensure_builtin_roles), so a
-- later release can add a permission to them without a migration.
INSERT INTO roles (name, description, builtin) VALUES
    ('master-admin', 'Everything, on every client (including private data).', true),
    ('client-admin', 'Everything on the clients granted, except creating and deleting clients, roles and servers.', true),
    ('editor', 'Read everything granted; manage templates; write and import recipients.', true),
    ('viewer', 'Read everything granted except the audit log.', true);
