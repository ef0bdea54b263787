-- The registry: database servers, clients (master and sub-clients) and the durable job queue.
-- Desired state lives here; workers reconcile each tenant database toward it (DESIGN.md §2, §5).

-- A PostgreSQL cluster that can hold tenant databases.
CREATE TABLE db_servers (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9-]{0,39}$'),
    -- Admin connection URL. NULL = the control plane's own cluster, reached with the control plane's
    -- credentials (so the default server stores no secret at all). Never returned by the API, never logged.
    admin_url     text,
    max_databases integer NOT NULL DEFAULT 1000 CHECK (max_databases > 0),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining')),
    -- Tenant migration version of this server's template database, as last verified (0 = not made yet).
    template_version integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE clients (
    -- Immutable; tenant database and role names derive from it, never from the slug.
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug           text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9-]{1,39}$'),
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    parent_id      uuid REFERENCES clients (id),
    kind           text NOT NULL CHECK (kind IN ('master', 'sub')),
    status         text NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'failed',
                                                   'deleting', 'deleted')),
    server_id      bigint REFERENCES db_servers (id),
    db_name        text UNIQUE,
    -- Latest tenant migration applied to the client's database, as recorded after a successful run.
    schema_version integer NOT NULL DEFAULT 0,
    -- Bumped on every change of desired state; lets caches and workers detect stale reads.
    generation     bigint NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz,
    CHECK ((kind = 'master') = (parent_id IS NULL))
);

-- A slug is unique among live clients; a deleted client keeps its row (tombstone) and frees its slug.
CREATE UNIQUE INDEX clients_slug_live ON clients (slug) WHERE status <> 'deleted';
-- Exactly one master.
CREATE UNIQUE INDEX clients_one_master ON clients ((kind)) WHERE kind = 'master';
CREATE INDEX clients_parent ON clients (parent_id);

-- Durable jobs: claimed with FOR UPDATE SKIP LOCKED and a lease; NOTIFY mandant_jobs wakes workers.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind         text NOT NULL,
    client_id    uuid REFERENCES clients (id),
    payload      jsonb NOT NULL DEFAULT '{}',
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    run_after    timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz,
    locked_by    text,
    last_error   text,
    -- The last step this job completed (progress, for operators and tests; steps re-check real state anyway).
    step         text,
    -- What the job produced, e.g. {"archive": "/path/to/dump"}.
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE INDEX jobs_claimable ON jobs (run_after) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_client ON jobs (client_id, created_at);
-- At most one queued job of a kind per client: a repeated request or a second process cannot double-enqueue,
-- and the queued job reads the latest desired state when it runs. A job already running may have read an older
-- state, so a change made meanwhile queues a new one behind it (jobs of one client run one at a time).
CREATE UNIQUE INDEX jobs_one_queued_per_client ON jobs (client_id, kind) WHERE status = 'queued';
-- Jobs of one client run one at a time (provisioning and deletion of one database must never overlap).
CREATE UNIQUE INDEX jobs_one_running_per_client ON jobs (client_id) WHERE status = 'running';

-- The master client exists from the first migration; it is provisioned like any other client.
INSERT INTO clients (slug, name, kind, status) VALUES ('master', 'Master', 'master', 'provisioning');
