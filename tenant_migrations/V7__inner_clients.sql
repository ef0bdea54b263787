-- Inner clients (issue #19): content-separated units inside one client database, enforced by row-level security.
--
-- Who sees what is decided by two cluster-wide NOLOGIN group roles that mandant creates on every server before it
-- migrates a database (tenant::cluster::ensure_rls_groups; they must exist when this file runs):
--   mandant_rls_parent  every tenant's own role (the owner) is a member: the parent's requests, DDL and the
--                       fan-out see every row (a policy USING (true));
--   mandant_rls_inner   the second login role of each tenant database (`<tenant role>_rls`, owns nothing, neither
--                       superuser nor BYPASSRLS) is a member: it sees only the slice of the inner client named by
--                       `set_config('mandant.inner_client', '<n>', true)` in the same transaction. No setting (or
--                       an empty one, as after a transaction that set it) admits nothing.
-- Policies per role keep each plan simple: the parent's queries carry no extra predicate at all, an inner client's
-- carry one indexed comparison with an init plan (no per-row subquery, no join: FACTS.md).
--
-- Membership is stored on the rows (`mandant_` columns: never field names, never shown in reads):
--   mailing_lists.mandant_inner   the inner clients whose scope holds the list (set by mandant on scope changes);
--   bindings.mandant_inner        a copy of the list's (a trigger), so a binding is visible with its list;
--   recipients.mandant_inner_rules the inner clients whose rule the row matched when last evaluated (a job);
--   recipients.mandant_inner      the union of the lists' and the rules' memberships: what the policy compares.
-- Triggers keep recipients.mandant_inner current when bindings or a list's scope change; they run as SECURITY
-- DEFINER functions owned by the tenant role (a member of mandant_rls_parent), because under FORCE a trigger
-- running as an inner client would see only that client's slice.
--
-- Expand only and cheap on large tenants: constant defaults (no rewrite), no row updated. The stored lower-case
-- e-mail (recipients.mandant_email_lower, kept by a trigger for new writes) is filled in for existing rows, and
-- its index and the membership GIN index are built CONCURRENTLY, by the job that prepares a database for inner
-- clients (tenant::inner::prepare), outside any migration transaction.

SET LOCAL lock_timeout = '5s';

ALTER TABLE recipients
    ADD COLUMN mandant_inner integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN mandant_inner_rules integer[] NOT NULL DEFAULT '{}',
    ADD COLUMN mandant_email_lower text;
ALTER TABLE mailing_lists ADD COLUMN mandant_inner integer[] NOT NULL DEFAULT '{}';
ALTER TABLE bindings ADD COLUMN mandant_inner integer[] NOT NULL DEFAULT '{}';
-- The inner client that created the group or template (NULL: the parent's).
ALTER TABLE target_groups ADD COLUMN mandant_owner integer;
ALTER TABLE templates ADD COLUMN mandant_owner integer;

-- The inner client of the current transaction, NULL when none is set.
CREATE FUNCTION mandant_inner_client() RETURNS integer LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('mandant.inner_client', true), '')::integer
$$;

-- What a row written by an inner client belongs to, as column defaults (set after ADD COLUMN, so nothing is
-- rewritten; a default applies to new rows only): the inner client of the transaction, nothing for the parent.
CREATE FUNCTION mandant_inner_default() RETURNS integer[] LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN mandant_inner_client() IS NULL THEN '{}'::integer[] ELSE ARRAY[mandant_inner_client()] END
$$;
ALTER TABLE recipients ALTER COLUMN mandant_inner SET DEFAULT mandant_inner_default();
ALTER TABLE mailing_lists ALTER COLUMN mandant_inner SET DEFAULT mandant_inner_default();
ALTER TABLE target_groups ALTER COLUMN mandant_owner SET DEFAULT mandant_inner_client();
ALTER TABLE templates ALTER COLUMN mandant_owner SET DEFAULT mandant_inner_client();

-- Recomputes recipients.mandant_inner of the given recipients from their lists and rule memberships.
CREATE FUNCTION mandant_refresh_inner(ids bigint[]) RETURNS void
    LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE recipients r SET mandant_inner = m.inner
    FROM (
        SELECT r2.id, ARRAY(
            SELECT DISTINCT x FROM (
                SELECT unnest(l.mandant_inner)
                FROM bindings b JOIN mailing_lists l ON l.id = b.mailing_list_id
                WHERE b.recipient_id = r2.id
                UNION ALL
                SELECT unnest(r2.mandant_inner_rules)
            ) s(x) ORDER BY x
        ) AS inner
        FROM recipients r2 WHERE r2.id = ANY(ids)
    ) m
    WHERE r.id = m.id AND r.mandant_inner IS DISTINCT FROM m.inner;
$$;
REVOKE EXECUTE ON FUNCTION mandant_refresh_inner(bigint[]) FROM PUBLIC;

-- A binding is visible with its list: copy the list's memberships onto it.
CREATE FUNCTION mandant_binding_scope() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    NEW.mandant_inner := coalesce(
        (SELECT l.mandant_inner FROM mailing_lists l WHERE l.id = NEW.mailing_list_id), '{}');
    RETURN NEW;
END $$;

CREATE TRIGGER bindings_scope BEFORE INSERT OR UPDATE OF mailing_list_id ON bindings
    FOR EACH ROW EXECUTE FUNCTION mandant_binding_scope();

-- Only bindings to lists in some scope change a membership: a database without inner clients pays one scan of
-- the statement's transition table.
CREATE FUNCTION mandant_bindings_scope_added() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM mandant_refresh_inner(ARRAY(SELECT DISTINCT recipient_id FROM added WHERE mandant_inner <> '{}'));
    RETURN NULL;
END $$;

CREATE FUNCTION mandant_bindings_scope_removed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM mandant_refresh_inner(ARRAY(SELECT DISTINCT recipient_id FROM removed WHERE mandant_inner <> '{}'));
    RETURN NULL;
END $$;

CREATE TRIGGER bindings_scope_added AFTER INSERT ON bindings
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION mandant_bindings_scope_added();
CREATE TRIGGER bindings_scope_removed AFTER DELETE ON bindings
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION mandant_bindings_scope_removed();

-- A list joining or leaving a scope: its bindings follow, and so do its recipients.
CREATE FUNCTION mandant_list_scope_changed() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE bindings SET mandant_inner = NEW.mandant_inner
    WHERE mailing_list_id = NEW.id AND mandant_inner IS DISTINCT FROM NEW.mandant_inner;
    PERFORM mandant_refresh_inner(ARRAY(SELECT recipient_id FROM bindings WHERE mailing_list_id = NEW.id));
    RETURN NULL;
END $$;

CREATE TRIGGER mailing_lists_scope AFTER UPDATE OF mandant_inner ON mailing_lists
    FOR EACH ROW WHEN (OLD.mandant_inner IS DISTINCT FROM NEW.mandant_inner)
    EXECUTE FUNCTION mandant_list_scope_changed();

-- The stored lower-case address: `=` and the pattern range on it are leakproof, so its index serves a lookup or
-- a prefix search under a policy, where lower(email) cannot (FACTS.md).
CREATE FUNCTION mandant_email_lower() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.mandant_email_lower := lower(NEW.email);
    RETURN NEW;
END $$;

CREATE TRIGGER recipients_email_lower BEFORE INSERT OR UPDATE OF email ON recipients
    FOR EACH ROW EXECUTE FUNCTION mandant_email_lower();

-- The retention triggers (V6) look at every binding of a recipient: under FORCE they must not run as an inner
-- client, which sees only its own.
ALTER FUNCTION mandant_bindings_added() SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION mandant_bindings_removed() SECURITY DEFINER SET search_path = public, pg_temp;

-- Row-level security.
ALTER TABLE recipients ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipients FORCE ROW LEVEL SECURITY;
ALTER TABLE mailing_lists ENABLE ROW LEVEL SECURITY;
ALTER TABLE mailing_lists FORCE ROW LEVEL SECURITY;
ALTER TABLE bindings ENABLE ROW LEVEL SECURITY;
ALTER TABLE bindings FORCE ROW LEVEL SECURITY;
ALTER TABLE target_groups ENABLE ROW LEVEL SECURITY;
ALTER TABLE target_groups FORCE ROW LEVEL SECURITY;
ALTER TABLE templates ENABLE ROW LEVEL SECURITY;
ALTER TABLE templates FORCE ROW LEVEL SECURITY;

CREATE POLICY mandant_parent ON recipients TO mandant_rls_parent USING (true) WITH CHECK (true);
CREATE POLICY mandant_parent ON mailing_lists TO mandant_rls_parent USING (true) WITH CHECK (true);
CREATE POLICY mandant_parent ON bindings TO mandant_rls_parent USING (true) WITH CHECK (true);
CREATE POLICY mandant_parent ON target_groups TO mandant_rls_parent USING (true) WITH CHECK (true);
CREATE POLICY mandant_parent ON templates TO mandant_rls_parent USING (true) WITH CHECK (true);

CREATE POLICY mandant_inner ON recipients TO mandant_rls_inner
    USING (mandant_inner @> ARRAY[(SELECT mandant_inner_client())])
    WITH CHECK (mandant_inner @> ARRAY[(SELECT mandant_inner_client())]);
CREATE POLICY mandant_inner ON mailing_lists TO mandant_rls_inner
    USING (mandant_inner @> ARRAY[(SELECT mandant_inner_client())])
    WITH CHECK (mandant_inner @> ARRAY[(SELECT mandant_inner_client())]);
-- Foreign-key checks bypass row-level security: binding another slice's recipient id to one's own list would pull
-- that recipient into the slice, so a new binding needs a recipient this inner client can already see.
CREATE POLICY mandant_inner ON bindings TO mandant_rls_inner
    USING (mandant_inner @> ARRAY[(SELECT mandant_inner_client())])
    WITH CHECK (mandant_inner @> ARRAY[(SELECT mandant_inner_client())]
                AND EXISTS (SELECT 1 FROM recipients r WHERE r.id = recipient_id));
CREATE POLICY mandant_inner ON target_groups TO mandant_rls_inner
    USING (mandant_owner = (SELECT mandant_inner_client()))
    WITH CHECK (mandant_owner = (SELECT mandant_inner_client()));
-- The parent's templates (inherited and local) are readable; an inner client writes only its own.
CREATE POLICY mandant_inner_read ON templates FOR SELECT TO mandant_rls_inner
    USING (mandant_owner IS NULL OR mandant_owner = (SELECT mandant_inner_client()));
CREATE POLICY mandant_inner_insert ON templates FOR INSERT TO mandant_rls_inner
    WITH CHECK (mandant_owner = (SELECT mandant_inner_client()) AND origin = 'local');
CREATE POLICY mandant_inner_update ON templates FOR UPDATE TO mandant_rls_inner
    USING (mandant_owner = (SELECT mandant_inner_client()))
    WITH CHECK (mandant_owner = (SELECT mandant_inner_client()) AND origin = 'local');
CREATE POLICY mandant_inner_delete ON templates FOR DELETE TO mandant_rls_inner
    USING (mandant_owner = (SELECT mandant_inner_client()));

GRANT USAGE ON SCHEMA public TO mandant_rls_inner;
GRANT SELECT, INSERT, UPDATE, DELETE ON recipients, mailing_lists, bindings, target_groups, templates
    TO mandant_rls_inner;
GRANT SELECT ON field_catalogue, mandant_retention_epoch TO mandant_rls_inner;
