-- Retention (issue #18): the master's rules, inherited by every client, and each client's stricter override.
-- One row per (scope, rule); client_id NULL is the master's rule. days NULL: off (master) or no override (client).
--
-- A tightening (a rule turned on, or its period shortened) takes effect for the purge job one day later
-- (domain::retention::TIGHTENING_WAIT): until tightened_at + 1 day the job applies previous_days, the value in
-- force before (NULL = nothing), so a mistaken setting can be seen in the preview and undone before anything is
-- deleted. A loosening takes effect at once.
CREATE TABLE retention_rules (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id     uuid REFERENCES clients (id) ON DELETE CASCADE,
    rule          text NOT NULL CHECK (rule IN ('opted_out_or_bounced', 'unbound')),
    days          integer CHECK (days BETWEEN 1 AND 36500),
    previous_days integer CHECK (previous_days BETWEEN 1 AND 36500),
    tightened_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX retention_rules_master ON retention_rules (rule) WHERE client_id IS NULL;
CREATE UNIQUE INDEX retention_rules_client ON retention_rules (client_id, rule) WHERE client_id IS NOT NULL;
