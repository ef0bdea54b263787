-- Cross-client work from the master: target groups evaluated in every client, and the figures of the overview.

-- A target group of the master over standard and central fields, evaluated in every matching client's database.
-- Which clients: client_ids (these), parent_id (that client's sub-clients), or neither (every client).
CREATE TABLE central_target_groups (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    rule       jsonb NOT NULL,
    client_ids uuid[] CHECK (cardinality(client_ids) BETWEEN 1 AND 1000),
    parent_id  uuid REFERENCES clients (id),
    created_by uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (client_ids IS NULL OR parent_id IS NULL)
);
CREATE UNIQUE INDEX central_target_groups_name ON central_target_groups (lower(name));

-- Per client: figures gathered by the statistics worker (never by a request), each with the time it was taken,
-- and the last time any process's routing pool served the client.
CREATE TABLE client_stats (
    client_id      uuid PRIMARY KEY REFERENCES clients (id) ON DELETE CASCADE,
    database_bytes bigint,
    size_at        timestamptz,
    recipients     bigint,
    lists          bigint,
    counts_at      timestamptz,
    -- The last collection error for this client (NULL after a success), and when.
    error          text,
    error_at       timestamptz,
    last_served_at timestamptz
);
