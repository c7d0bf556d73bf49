"""`helios-proxy tenancy install`: the schema `helios` with `helios.tenant()` (the verified tenant of
the session, tenancy/proof.py) and the key it checks with, in each database tenants use.

Run as a role that may create schemas (a superuser, or the database owner): the schema, the key
table and the function belong to it. Nobody else gets any privilege on helios.key; everyone may
call helios.tenant(). Running it again is safe: the function is replaced, the key table holds the
key of the key file (a new key file means a new key: re-run the install, then reload the proxies).
"""
import psycopg2

from .proof import PROOF_SETTING, VERSION, make_key, pads, read_key

SCHEMA_SQL = f"""
CREATE SCHEMA IF NOT EXISTS helios;
REVOKE ALL ON SCHEMA helios FROM PUBLIC;
GRANT USAGE ON SCHEMA helios TO PUBLIC;
CREATE TABLE IF NOT EXISTS helios.key (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                                       inner_pad bytea NOT NULL, outer_pad bytea NOT NULL);
REVOKE ALL ON helios.key FROM PUBLIC;
CREATE OR REPLACE FUNCTION helios.tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
  proof text := current_setting('{PROOF_SETTING}', true);
  part text[];
  k record;
BEGIN
  IF proof IS NULL OR proof = '' THEN
    RETURN NULL;
  END IF;
  part := regexp_match(proof, '^({VERSION}:([0-9]{{1,10}}):(.+)):([0-9a-f]{{64}})$');
  IF part IS NULL OR part[2] <> pg_backend_pid()::text THEN
    RETURN NULL;  -- not a proof, or one made for another backend
  END IF;
  SELECT inner_pad, outer_pad INTO k FROM helios.key;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF encode(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(part[1], 'UTF8'))), 'hex') <> part[4] THEN
    RETURN NULL;  -- not signed with the key
  END IF;
  RETURN part[3];
END
$fn$;
REVOKE ALL ON FUNCTION helios.tenant() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION helios.tenant() TO PUBLIC;
COMMENT ON FUNCTION helios.tenant() IS
  'The tenant HeliosProxy verified for this session (NULL when it cannot be verified). Policies: USING (tenant = helios.tenant())';
"""


def key_for(path):
    """(key, made) of the key file, made when missing."""
    key = read_key(path)
    if key is not None:
        return key, False
    return make_key(path), True


def databases_of(conn):
    cur = conn.cursor()
    cur.execute("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1")
    return [r[0] for r in cur.fetchall()]


def install(config, key_path, user, password=None, databases=(), echo=print):
    """Install in databases (default: every database that takes connections) on config's primary."""
    primary = next((n for n in config.nodes if n.role == "primary"), None)
    if primary is None:
        raise ValueError("the configuration names no primary node (role = \"primary\")")
    key, made = key_for(key_path)
    if made:
        echo(f"made a new key in {key_path} (mode 0600; the proxy reads it, keep it secret)")
    inner, outer = pads(key)

    def connect(dbname):
        conn = psycopg2.connect(host=primary.host, port=primary.port, user=user, password=password,
                                dbname=dbname, connect_timeout=10)
        conn.autocommit = True
        return conn

    if not databases:
        first = connect("postgres")
        try:
            databases = databases_of(first)
        finally:
            first.close()
    for dbname in databases:
        conn = connect(dbname)
        try:
            cur = conn.cursor()
            cur.execute("BEGIN")
            cur.execute(SCHEMA_SQL)
            cur.execute("INSERT INTO helios.key (inner_pad, outer_pad) VALUES (%s, %s) ON CONFLICT (one) "
                        "DO UPDATE SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad",
                        (inner, outer))
            cur.execute("COMMIT")
        finally:
            conn.close()
        echo(f"{dbname}: helios.tenant() installed")
    return list(databases)
