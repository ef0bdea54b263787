-- Console sessions (issue #22): a browser signs in with an API token and gets a random session id in an HttpOnly,
-- SameSite=Strict cookie. Only the id's SHA-256 is stored. A session acts as its token: it ends at once when the
-- token is revoked or expires, or the user is disabled (the token's principal is checked on every request), and
-- when the token or user is deleted (cascade). Sessions expire after an idle time and at a hard limit.
CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    token_id    uuid NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    -- Sent back by the page in X-CSRF-Token on every change; compared in constant time.
    csrf_token  text NOT NULL CHECK (char_length(csrf_token) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Idle expiry, pushed forward on use (at most once a minute) but never past max_until.
    expires_at  timestamptz NOT NULL,
    max_until   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_token ON console_sessions (token_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
