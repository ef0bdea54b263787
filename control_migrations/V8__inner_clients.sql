-- Inner clients (issue #19): units inside a client's database, no database of their own. `inner_no` is the
-- number the tenant database's row-level security knows the inner client by (unique per parent, never reused:
-- a deleted inner client keeps its row, and rows may still carry its number until they are cleaned up).
-- `scope` is {"lists": [ids], "rule": {...} | null}. `inner_ready` marks a database that can hold inner clients
-- (its second role exists, its lower-case e-mail column is filled in and indexed: tenant::inner::prepare).

ALTER TABLE clients DROP CONSTRAINT clients_kind_check;
ALTER TABLE clients ADD CONSTRAINT clients_kind_check CHECK (kind IN ('master', 'sub', 'inner'));
ALTER TABLE clients
    ADD COLUMN inner_no integer CHECK (inner_no > 0),
    ADD COLUMN scope jsonb CHECK (jsonb_typeof(scope) = 'object'),
    ADD COLUMN inner_ready boolean NOT NULL DEFAULT false;
ALTER TABLE clients ADD CONSTRAINT clients_inner_shape
    CHECK ((kind = 'inner') = (inner_no IS NOT NULL) AND (kind = 'inner') = (scope IS NOT NULL)
           AND (kind <> 'inner' OR (server_id IS NULL AND db_name IS NULL)));
CREATE UNIQUE INDEX clients_inner_no ON clients (parent_id, inner_no) WHERE inner_no IS NOT NULL;
