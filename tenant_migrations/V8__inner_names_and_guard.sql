-- Inner clients (issue #19), found by review: two more existence signals closed, and the membership columns guarded.
--
-- 1. Names of lists and target groups were unique per database (`lower(name)`): an inner client creating a list or
--    group learned from a 409 whether the parent or a sibling had one of that name, although row-level security hides
--    it. Names are now unique per owner: the parent (NULL) or the inner client that created it
--    (`mandant_owner`, stamped by the column default). The parent, who sees everything, may see two lists of one name
--    (its own and an inner client's). Small tables: the index builds within the migration.
-- 2. The second role could rewrite `mandant_` membership columns (e.g. add a sibling's number to a list of its own,
--    which the triggers then carry onto the recipients): a trigger now refuses any such change made inside an inner
--    client's transaction, except what mandant itself does there (a new row of its own, and joining its own rule
--    scope). The triggers and jobs that keep memberships current run as the owner, outside any inner client.

SET LOCAL lock_timeout = '5s';

ALTER TABLE mailing_lists ADD COLUMN mandant_owner integer;
ALTER TABLE mailing_lists ALTER COLUMN mandant_owner SET DEFAULT mandant_inner_client();

CREATE UNIQUE INDEX mailing_lists_owner_name_key ON mailing_lists (coalesce(mandant_owner, 0), lower(name));
DROP INDEX mailing_lists_name_key;
CREATE UNIQUE INDEX target_groups_owner_name_key ON target_groups (coalesce(mandant_owner, 0), lower(name));
DROP INDEX target_groups_name_key;

CREATE FUNCTION mandant_guard_membership() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me integer := mandant_inner_client();
BEGIN
    -- Outside an inner client's transaction (the parent, the jobs: no setting; without it the second role sees and
    -- writes no row at all), or inside one of the owner's SECURITY DEFINER triggers (current_user is then the owner):
    -- nothing to guard.
    IF me IS NULL OR current_user <> session_user THEN
        RETURN NEW;
    END IF;
    IF TG_TABLE_NAME = 'recipients' THEN
        IF TG_OP = 'INSERT' THEN
            IF NEW.mandant_inner IS DISTINCT FROM ARRAY[me] OR NOT NEW.mandant_inner_rules <@ ARRAY[me] THEN
                RAISE EXCEPTION 'an inner client cannot set memberships' USING ERRCODE = 'insufficient_privilege';
            END IF;
        ELSIF NEW.mandant_inner IS DISTINCT FROM OLD.mandant_inner
              OR NOT NEW.mandant_inner_rules <@ (OLD.mandant_inner_rules || me) THEN
            RAISE EXCEPTION 'an inner client cannot change memberships' USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.mandant_inner IS DISTINCT FROM ARRAY[me] OR NEW.mandant_owner IS DISTINCT FROM me THEN
            RAISE EXCEPTION 'an inner client cannot set memberships' USING ERRCODE = 'insufficient_privilege';
        END IF;
    ELSIF NEW.mandant_inner IS DISTINCT FROM OLD.mandant_inner OR NEW.mandant_owner IS DISTINCT FROM OLD.mandant_owner THEN
        RAISE EXCEPTION 'an inner client cannot change memberships' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER recipients_guard_membership BEFORE INSERT OR UPDATE ON recipients
    FOR EACH ROW EXECUTE FUNCTION mandant_guard_membership();
CREATE TRIGGER mailing_lists_guard_membership BEFORE INSERT OR UPDATE ON mailing_lists
    FOR EACH ROW EXECUTE FUNCTION mandant_guard_membership();
