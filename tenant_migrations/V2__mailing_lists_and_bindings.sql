-- Mailing lists and the bindings of recipients to them (DESIGN.md §6, Recipients and lists).
CREATE TABLE mailing_lists (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description text CHECK (char_length(description) <= 2000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX mailing_lists_name_key ON mailing_lists (lower(name));

-- A recipient's membership of a list, with its status; the status history is kept by updated_at.
CREATE TABLE bindings (
    mailing_list_id bigint NOT NULL REFERENCES mailing_lists (id) ON DELETE CASCADE,
    recipient_id    bigint NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
    status          text NOT NULL
                    CHECK (status IN ('active', 'opt_out', 'bounced', 'blocked', 'pending_confirmation')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mailing_list_id, recipient_id)
);

CREATE INDEX bindings_recipient ON bindings (recipient_id);
CREATE INDEX bindings_list_status ON bindings (mailing_list_id, status);
