-- Target groups: a named rule (JSON tree) compiled by mandant to parameterised SQL over recipients.
CREATE TABLE target_groups (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    rule        jsonb NOT NULL CHECK (jsonb_typeof(rule) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX target_groups_name_key ON target_groups (lower(name));
