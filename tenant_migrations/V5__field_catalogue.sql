-- The custom recipient fields applied to this database (central ones inherited from the master and the client's
-- own), written in the same transaction as the ALTER TABLE that adds the column. Standard fields are not listed.
CREATE TABLE field_catalogue (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{2,62}$'),
    origin        text NOT NULL CHECK (origin IN ('central', 'client')),
    data_type     text NOT NULL CHECK (data_type IN ('text', 'integer', 'number', 'boolean', 'date', 'timestamp')),
    length        integer CHECK (length BETWEEN 1 AND 4000),
    required      boolean NOT NULL DEFAULT false,
    default_value jsonb,
    personal      boolean NOT NULL DEFAULT false,
    applied_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((data_type = 'text') = (length IS NOT NULL))
);
