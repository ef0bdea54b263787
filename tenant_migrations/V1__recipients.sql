-- Recipients with the standard fields every tenant has (DESIGN.md §1). Custom fields are added as real columns
-- by the field-schema reconciler; the fleet-migration issue completes the rest of the tenant schema.
CREATE TABLE recipients (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    first_name  text CHECK (char_length(first_name) <= 255),
    last_name   text CHECK (char_length(last_name) <= 255),
    gender      text CHECK (char_length(gender) <= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- E-mail addresses are unique per tenant, case-insensitively.
CREATE UNIQUE INDEX recipients_email_key ON recipients (lower(email));
