-- Several database servers (issue #20): capacity, routing budget, zone, the pause policy, the admin password
-- encrypted at rest, and what registration observed. (V8 is another change's; refinery allows the gap.)

ALTER TABLE db_servers
    -- The admin password, sealed with a key derived from the credential secret (ChaCha20-Poly1305, the server's
    -- name as associated data): 12 bytes of nonce, then the ciphertext and its tag. `admin_url` then holds the URL
    -- without its password. NULL for `local` (the control plane's own credentials).
    ADD COLUMN admin_password bytea,
    -- Declared capacity in bytes (PostgreSQL cannot report free disk); NULL = no byte limit.
    ADD COLUMN max_bytes bigint CHECK (max_bytes > 0),
    -- Tenant connections per mandant process on this server; NULL = routing.budget_per_server.
    ADD COLUMN budget integer CHECK (budget BETWEEN 1 AND 10000),
    -- Placement zone; NULL = none (a client asking for a zone never lands here).
    ADD COLUMN zone text CHECK (zone ~ '^[a-z][a-z0-9-]{0,39}$'),
    -- Observed at registration: server_version_num and wal_level.
    ADD COLUMN server_version integer,
    ADD COLUMN wal_level text;

-- `paused`: keeps its clients, gets no new ones. (`draining` stays reserved for the moves issue.)
ALTER TABLE db_servers DROP CONSTRAINT db_servers_status_check;
ALTER TABLE db_servers ADD CONSTRAINT db_servers_status_check
    CHECK (status IN ('active', 'paused', 'draining'));
