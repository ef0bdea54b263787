-- Live tenant moves between servers (issue #21).
--
-- A move is a `move_client` job (its id names the replication objects; its `step` is the persisted phase, its
-- `result` the progress). While it runs the client records where it is going (`moving_to`: fleet migrations and
-- field changes skip it and pick it up after) and, for the short freeze before the switch, `frozen` (every
-- process stops new checkouts for it and waits). The switch sets `server_id`, bumps `generation` and clears both
-- in one transaction; the notification trigger below tells every process.

ALTER TABLE clients
    ADD COLUMN moving_to bigint REFERENCES db_servers (id),
    ADD COLUMN frozen boolean NOT NULL DEFAULT false;

CREATE INDEX clients_moving_to ON clients (moving_to) WHERE moving_to IS NOT NULL;

-- The notification also fires when a freeze starts or ends.
DROP TRIGGER clients_notify_change ON clients;
CREATE TRIGGER clients_notify_change
    AFTER UPDATE OF status, server_id, db_name, slug, frozen ON clients
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.server_id IS DISTINCT FROM NEW.server_id
          OR OLD.db_name IS DISTINCT FROM NEW.db_name
          OR OLD.slug IS DISTINCT FROM NEW.slug
          OR OLD.frozen IS DISTINCT FROM NEW.frozen)
    EXECUTE FUNCTION mandant_client_changed();

-- A moved tenant's source database, renamed and kept for `tenants.move_retention_days`, then dropped by a job
-- (with the tenant's roles on that server, unless the client lives there again by then).
CREATE TABLE retired_databases (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id   uuid NOT NULL REFERENCES clients (id),
    server_id   bigint NOT NULL REFERENCES db_servers (id),
    -- The database's name after the rename.
    db_name     text NOT NULL,
    move_id     uuid NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT now(),
    drop_after  timestamptz NOT NULL,
    dropped_at  timestamptz,
    UNIQUE (server_id, db_name)
);

CREATE INDEX retired_databases_due ON retired_databases (drop_after) WHERE dropped_at IS NULL;
