-- Row-level security on helios.tenant(), the tenant HeliosProxy proves for each session
-- (docs/tenancy.md). First: helios-proxy tenancy install -c /etc/helios-proxy/helios.toml
-- Then, as the tables' owner:

CREATE TABLE IF NOT EXISTS items (
    id      bigserial PRIMARY KEY,
    tenant  text NOT NULL DEFAULT helios.tenant(),   -- inserts land in the caller's tenant
    name    text NOT NULL
);
CREATE INDEX IF NOT EXISTS items_tenant ON items (tenant);

ALTER TABLE items ENABLE ROW LEVEL SECURITY;
-- (SELECT ...) makes PostgreSQL evaluate the function once per statement, not once per row
CREATE POLICY items_tenant ON items
    USING (tenant = (SELECT helios.tenant()))
    WITH CHECK (tenant = (SELECT helios.tenant()));

-- The application's role: rows only through the policy; no CREATE on schema helios (the default).
GRANT SELECT, INSERT, UPDATE, DELETE ON items TO app;
GRANT USAGE ON SEQUENCE items_id_seq TO app;
