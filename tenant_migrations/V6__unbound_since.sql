-- Retention (issue #18): since when a recipient has had no binding to any mailing list, so "no binding for M days"
-- can be purged. Expand only, and cheap on a tenant with millions of recipients: a nullable column (no rewrite),
-- a one-row table, new triggers; no row of `recipients` is updated here (an UPDATE of the unbound ones would run
-- under the ALTER TABLE's ACCESS EXCLUSIVE lock and keep the table from every reader for as long as it takes:
-- ~30 s for 650,000 rows measured). Code of the previous release keeps working: it never names the column (a
-- recipient it creates starts unbound through the default, bindings it writes fire the triggers); only its `r.*`
-- reads show the column as one more value until it is replaced.
--
-- The `mandant_` prefix is refused for field names, so no custom field can collide with the column; recipient
-- reads and the field drift check skip it (domain::is_internal_column). NULL = bound to a list now, or unbound
-- since before this migration: such a recipient (no binding, NULL) counts as unbound from
-- `mandant_retention_epoch.unbound_counted_from`, the time of this migration (since when it really was is not
-- known; counting from now can only delay a purge, never bring one forward); see data::retention::predicate.
-- Kept by statement-level triggers on bindings (one UPDATE per statement, not per row, so deleting a list with a
-- million bindings is one set-based update); a deleted list's bindings cascade away through the same DELETE
-- trigger. The time a binding's status last changed is bindings.updated_at (V2; lists::bind sets it only when the
-- status changes), so opt_out/bounced need no column of their own.

-- Give up (the migration fails for this tenant and can be run again) rather than wait behind a long read of
-- recipients while every later reader queues behind the ALTER TABLE.
SET LOCAL lock_timeout = '5s';

ALTER TABLE recipients ADD COLUMN mandant_unbound_since timestamptz;
-- `now()` is stable, not volatile: setting it as the default afterwards rewrites nothing and applies to new rows.
ALTER TABLE recipients ALTER COLUMN mandant_unbound_since SET DEFAULT now();

CREATE TABLE mandant_retention_epoch (
    single               boolean PRIMARY KEY DEFAULT true CHECK (single),
    unbound_counted_from timestamptz NOT NULL DEFAULT now()
);
INSERT INTO mandant_retention_epoch DEFAULT VALUES;

CREATE FUNCTION mandant_bindings_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE recipients r SET mandant_unbound_since = NULL
    WHERE r.id IN (SELECT DISTINCT recipient_id FROM added) AND r.mandant_unbound_since IS NOT NULL;
    RETURN NULL;
END $$;

CREATE FUNCTION mandant_bindings_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A recipient deleted by the same statement (its bindings cascading) is not visible here: nothing to update.
    UPDATE recipients r SET mandant_unbound_since = now()
    WHERE r.id IN (SELECT DISTINCT recipient_id FROM removed) AND r.mandant_unbound_since IS NULL
      AND NOT EXISTS (SELECT 1 FROM bindings b WHERE b.recipient_id = r.id);
    RETURN NULL;
END $$;

CREATE TRIGGER bindings_added AFTER INSERT ON bindings
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION mandant_bindings_added();
CREATE TRIGGER bindings_removed AFTER DELETE ON bindings
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION mandant_bindings_removed();
