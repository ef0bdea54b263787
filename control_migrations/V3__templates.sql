-- Master templates with versions (desired state) and, per client, what its database holds (observed state).
CREATE TABLE templates (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The newest published version (template_versions holds every one).
    version     integer NOT NULL DEFAULT 1 CHECK (version > 0),
    -- Retracted: removed from every client that did not override it; the row stays for the sync to finish.
    retracted   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE template_versions (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version > 0),
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    subject     text NOT NULL CHECK (char_length(subject) <= 998),
    html_body   text NOT NULL,
    text_body   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- Per template and client: the version its copy holds and the sync state.
CREATE TABLE template_sync (
    template_id    uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    client_id      uuid NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    status         text NOT NULL CHECK (status IN ('pending', 'synced', 'failed', 'overridden')),
    synced_version integer,
    last_error     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, client_id)
);

CREATE INDEX template_sync_client ON template_sync (client_id);
CREATE INDEX template_sync_open ON template_sync (client_id) WHERE status IN ('pending', 'failed');
