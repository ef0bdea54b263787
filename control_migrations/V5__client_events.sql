-- Every change of a client's routing facts (status, server, database) notifies `mandant_clients` in the changing
-- transaction, so every process's data plane drops that client's cached route at commit (and closes its pool
-- when the client is no longer active). A trigger, not a call in each write: no status change can forget it,
-- including ones made by hand. Payload: '<client id> <status> <slug>', and ' <old slug>' when the slug changed.
CREATE FUNCTION mandant_client_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mandant_clients', NEW.id::text || ' ' || NEW.status || ' ' || NEW.slug
        || CASE WHEN OLD.slug IS DISTINCT FROM NEW.slug THEN ' ' || OLD.slug ELSE '' END);
    RETURN NULL;
END
$$;

CREATE TRIGGER clients_notify_change
    AFTER UPDATE OF status, server_id, db_name, slug ON clients
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.server_id IS DISTINCT FROM NEW.server_id
          OR OLD.db_name IS DISTINCT FROM NEW.db_name
          OR OLD.slug IS DISTINCT FROM NEW.slug)
    EXECUTE FUNCTION mandant_client_changed();
