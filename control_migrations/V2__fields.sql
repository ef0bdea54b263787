-- Custom recipient fields: the desired state (fields) and, per client, what its database has (field_status).
CREATE TABLE fields (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL: a central field, inherited by every client; otherwise the client's own field.
    client_id     uuid REFERENCES clients (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{2,62}$'),
    data_type     text NOT NULL
                  CHECK (data_type IN ('text', 'integer', 'number', 'boolean', 'date', 'timestamp')),
    length        integer CHECK (length BETWEEN 1 AND 4000),
    required      boolean NOT NULL DEFAULT false,
    default_value jsonb,
    personal      boolean NOT NULL DEFAULT false,
    -- Bumped by every change (a longer text, the personal flag); field_status says which version a client has.
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((data_type = 'text') = (length IS NOT NULL)),
    CHECK (NOT required OR default_value IS NOT NULL)
);

CREATE UNIQUE INDEX fields_central_name ON fields (name) WHERE client_id IS NULL;
CREATE UNIQUE INDEX fields_client_name ON fields (client_id, name) WHERE client_id IS NOT NULL;

-- One row per field and client that should have it: pending until the client's database has the field's
-- current version, then applied; failed records the last error while retries go on.
CREATE TABLE field_status (
    field_id        bigint NOT NULL REFERENCES fields (id) ON DELETE CASCADE,
    client_id       uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    status          text NOT NULL CHECK (status IN ('pending', 'applied', 'failed')),
    applied_version integer,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (field_id, client_id)
);

CREATE INDEX field_status_client ON field_status (client_id);
CREATE INDEX field_status_open ON field_status (client_id) WHERE status <> 'applied';
