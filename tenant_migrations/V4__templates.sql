-- Templates: copies inherited from the master (id = the master template's id) and the client's own.
CREATE TABLE templates (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    origin            text NOT NULL CHECK (origin IN ('inherited', 'local')),
    name              text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    subject           text NOT NULL DEFAULT '' CHECK (char_length(subject) <= 998),
    html_body         text NOT NULL DEFAULT '',
    text_body         text NOT NULL DEFAULT '',
    -- Inherited copies: the master version this copy holds (or held when it was overridden) ...
    master_version    integer CHECK (master_version > 0),
    -- ... and the newest master version published, which an overridden copy records but does not apply.
    available_version integer CHECK (available_version > 0),
    -- A local edit of an inherited copy; sync never overwrites it until it is reverted.
    overridden        boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((origin = 'inherited') = (master_version IS NOT NULL)),
    CHECK (origin = 'inherited' OR NOT overridden)
);

CREATE INDEX templates_origin ON templates (origin);
