"""Every setting, declared once: section, key, type, default, validation and a one-line description.

The loader, `helios-proxy check-config` and docs/configuration.md are all derived from this table.
"""
import re
from dataclasses import dataclass

GiB = 1 << 30
# Client authentication methods ([auth] method, [[auth.rules]] method); the last two check a token or
# key the client sends as its password (helios_proxy/auth/).
METHODS = ("trust", "reject", "md5", "scram-sha-256", "jwt", "api_key", "oauth2", "cert", "ldap")

TOKEN_ENTRY = re.compile(r"^([A-Za-z0-9_.-]+):(viewer|operator|admin):([0-9a-f]{64})$")  # admin.tokens


def token_entries(entries):
    bad = next((e for e in entries if not isinstance(e, str) or not TOKEN_ENTRY.match(e)), None)
    if bad is not None:
        return "an entry is not NAME:ROLE:SHA256 (ROLE viewer, operator or admin; see helios-proxy token)"
    return None


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    type: type
    default: object
    description: str
    choices: tuple = ()
    min: float = None
    max: float = None
    secret: bool = False      # never logged, redacted in /config
    reloadable: bool = False  # applied on SIGHUP without a restart
    validate: object = None   # callable(value) -> error text or None

    @property
    def path(self):
        return f"{self.section}.{self.key}"


def address(value):
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected \"host:port\" with a port between 1 and 65535"
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not re.fullmatch(r"[A-Za-z0-9.:-]+", host) or host.startswith("-"):
        return ("expected an address or host name before the port (for every interface: 0.0.0.0 for IPv4, "
                "[::] for IPv6)")
    return None


S = Setting
SETTINGS = (
    # [server]: the client-facing listener
    S("server", "listen", str, "127.0.0.1:6432", "Address clients connect to (host:port).", validate=address),
    S("server", "unix_socket_dir", str, "", "Also listen on the Unix socket .s.PGSQL.<port> in this directory "
      "(port of server.listen; psql -h DIR), as PostgreSQL and PgBouncer do; empty: no Unix socket."),
    S("server", "unix_socket_mode", str, "0777", "Permissions of the Unix socket (octal; PgBouncer's "
      "unix_socket_mode).", validate=lambda v: None if re.fullmatch(r"0?[0-7]{3}", v) else
      'expected an octal mode such as "0777" or "0770"'),
    S("server", "max_client_conn", int, 1000, "Most client connections at once; more get SQLSTATE 53300.",
      min=1, reloadable=True),
    S("server", "client_login_timeout", float, 60.0,
      "Seconds a client may take from connect to finished login.", min=0.1, reloadable=True),
    S("server", "client_idle_timeout", float, 0.0,
      "Close a client idle (outside a transaction) this many seconds; 0 disables.", min=0, reloadable=True),
    S("server", "fast_path", bool, True,
      "Handle a pooled session's common query (one simple Query between transactions, every stage "
      "content to let it through) in the client socket's read callback, without waking its greenlet "
      "(frontend/fastpath.py); /stats counts hits and misses by reason.", reloadable=True),
    S("server", "shutdown_timeout", float, 30.0,
      "On SIGTERM, seconds to let sessions finish before closing them.", min=0, reloadable=True),
    S("server", "max_startup_packet", int, 10000,
      "Largest startup packet accepted, in bytes (PostgreSQL's own limit is 10000).", min=64, max=1 << 20),
    S("server", "max_message_size", int, 64 << 20,
      "Largest protocol message the proxy holds whole (Query, Parse, Bind, ...), in bytes; larger "
      "CopyData and other messages it need not read are streamed to the server.", min=1024, max=GiB - 1),
    S("server", "pid_file", str, "", "Write the proxy's process id here while it runs (removed at exit); "
      "a file naming a live process stops a second start."),
    S("server", "tcp_keepalive", bool, True, "Enable TCP keepalive on client and server sockets."),
    S("server", "workers", int, 1, "Proxy processes sharing the listen port (SO_REUSEPORT), for machines "
      "with more cores than one process can use; connection limits are split between them and the admin "
      "API shows them as one proxy.", min=1, max=64),
    # [admin]: the REST API (admin/)
    S("admin", "enabled", bool, True, "Serve the admin REST API."),
    S("admin", "listen", str, "127.0.0.1:9090", "Address of the admin REST API (host:port).", validate=address),
    S("admin", "token", str, "", "Bearer token for the admin API; may also come from HELIOS_ADMIN__TOKEN.",
      secret=True),
    S("admin", "tokens", list, [], "Named tokens with roles: \"NAME:ROLE:SHA256\" entries (ROLE viewer, "
      "operator or admin), made by `helios-proxy token NAME --role ROLE`; mutations are logged with the name.",
      secret=True, reloadable=True, validate=token_entries),
    S("admin", "allowed_hosts", list, ["127.0.0.1", "localhost", "::1"], "Host header values the admin API "
      "answers (DNS rebinding protection); add the names operators use when it listens beyond loopback.",
      reloadable=True),
    S("admin", "max_body_bytes", int, 1 << 20, "Largest request body the admin API reads (413 beyond).",
      min=1024, reloadable=True),
    S("admin", "users", list, [], "Users allowed into the virtual admin database (SHOW POOLS, RELOAD, "
      "PAUSE ...) on the proxy port.", reloadable=True),
    S("admin", "database", str, "helios", "Name of the virtual admin database on the proxy port."),
    S("admin", "sql_enabled", bool, False, "Serve POST /api/sql (runs SQL through the proxy's routing).",
      reloadable=True),
    S("admin", "sql_user", str, "postgres", "User /api/sql runs as (password from users_file).", reloadable=True),
    S("admin", "sql_max_rows", int, 1000, "Most rows /api/sql returns.", min=1, reloadable=True),
    S("admin", "sql_timeout", float, 5.0, "statement_timeout of /api/sql queries, seconds.", min=0.001,
      reloadable=True),
    # [pool]: backend connection pools, one per (node, database, user)
    S("pool", "mode", str, "session", "When a server connection returns to the pool.",
      choices=("session", "transaction", "statement")),
    S("pool", "min_size", int, 0, "Server connections kept open per pool once it exists.", min=0,
      reloadable=True),
    S("pool", "max_size", int, 20, "Most server connections per pool; further clients wait.", min=1,
      reloadable=True),
    S("pool", "idle_timeout", float, 600.0, "Close a server connection idle this many seconds (above min_size).",
      min=0, reloadable=True),
    S("pool", "max_db_connections", int, 0,
      "Most server connections to one database over all its pools (users, nodes); 0 = no limit.", min=0,
      reloadable=True),
    S("pool", "max_user_connections", int, 0,
      "Most server connections for one user over all its pools; 0 = no limit.", min=0, reloadable=True),
    S("pool", "reserve_size", int, 0,
      "Extra connections a pool may open for clients that waited reserve_timeout.", min=0, reloadable=True),
    S("pool", "reserve_timeout", float, 5.0, "Seconds a client waits before the reserve may serve it.",
      min=0, reloadable=True),
    S("pool", "acquire_timeout", float, 120.0,
      "Seconds a client waits for a server connection before an error (PgBouncer's query_wait_timeout).",
      min=0.1, reloadable=True),
    S("pool", "own_query_timeout", float, 10.0, "Seconds the proxy's own statements on a server connection may "
      "take (reading a client's settings back, the WAL position, restoring its statements, resets); beyond it the "
      "connection is closed and the session goes on on another (a server that stopped answering behind a network "
      "that holds its bytes).", min=0.1, reloadable=True),
    S("pool", "query_timeout", float, 0.0, "End a client whose request the server has not answered in this "
      "many seconds (a hung server, a runaway query): the query is canceled, its server connection closed, "
      "the client gets FATAL 57014; 0 disables. Keep it above PostgreSQL's statement_timeout.", min=0,
      reloadable=True),
    S("pool", "idle_transaction_timeout", float, 0.0, "End a client idle inside a transaction this many "
      "seconds (FATAL 25P03); its transaction is rolled back and the server connection reused; 0 disables.",
      min=0, reloadable=True),
    S("pool", "connect_timeout", float, 5.0, "Seconds to connect and log in to a backend.", min=0.1,
      reloadable=True),
    S("pool", "reset_query", str, "DISCARD ALL", "Run on a server connection before another client gets it.",
      reloadable=True),
    S("pool", "check_after", float, 30.0,
      "Run check_query on a connection idle longer than this before handing it out; 0 always (the "
      "check waits for the server: such a request takes its session's greenlet, not the fast path).", min=0,
      reloadable=True),
    S("pool", "check_query", str, "SELECT 1", "Cheap query that proves a pooled connection alive.",
      reloadable=True),
    S("pool", "prepared_statements_cap", int, 100,
      "Named prepared statements kept per server connection in pooled modes (LRU); 0 is not allowed.",
      min=1),
    S("pool", "server_lifetime", float, 3600.0, "Close a server connection this many seconds after it opened.",
      min=0, reloadable=True),
    # [auth]: how clients prove who they are, and how the proxy logs in to PostgreSQL
    S("auth", "method", str, "trust", "Client authentication the proxy performs when no [[auth.rules]] entry "
      "matches (docs/auth.md).", choices=METHODS, reloadable=True),
    S("auth", "users_file", str, "",
      "PgBouncer userlist.txt: '\"user\" \"secret\"' per line; plaintext, md5... or SCRAM-SHA-256$...",
      reloadable=True),
    S("auth", "auth_user", str, "",
      "Backend user that runs auth_query for users missing from users_file; empty disables.", reloadable=True),
    S("auth", "auth_query", str, "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 AND "
      "(valuntil IS NULL OR valuntil > pg_catalog.now())",
      "Query returning (user, secret) for $1, run as auth_user on connections of its own (search_path "
      "pg_catalog) in auth_database.", reloadable=True),
    S("auth", "auth_database", str, "postgres", "Database the auth_query runs in (pg_shadow is the same in "
      "every database): a login naming a database never touches it before it has authenticated.",
      reloadable=True),
    S("auth", "max_scram_iterations", int, 100000, "Most SCRAM iterations a server may ask the proxy to "
      "compute (PostgreSQL's default is 4096); the derivation runs off the event loop.", min=4096,
      reloadable=True),
    S("auth", "backend_cleartext", bool, False, "Send a users_file password in cleartext to a server that "
      "asks for it; otherwise only over tls.server_mode = verify-full.", reloadable=True),
    S("auth", "mock_secret", str, "", "Secret that the SCRAM salts of unknown users derive from (PostgreSQL's "
      "mock authentication), so they stay the same across restarts and workers; default: derived from the "
      "users_file's secrets (random per start when it has none).", secret=True, reloadable=True),
    S("auth", "max_unauthenticated_per_address", int, 0, "Most connections from one client address that "
      "have not finished logging in (a TLS handshake, the startup packet, authentication); more get 53300 at "
      "once. 0: a quarter of server.max_client_conn (at least 1), so that one address cannot fill the proxy.",
      min=0, reloadable=True),
    # [tls]: client side and backend side TLS
    S("tls", "client_mode", str, "disable", "TLS towards clients: disable, allow/prefer (offer), require.",
      choices=("disable", "allow", "prefer", "require")),
    S("tls", "client_cert_file", str, "", "Certificate (PEM) presented to clients."),
    S("tls", "client_key_file", str, "", "Private key (PEM) of client_cert_file.", secret=False),
    S("tls", "server_mode", str, "disable", "TLS towards backends: disable, prefer, require, verify-full.",
      choices=("disable", "prefer", "require", "verify-full")),
    S("tls", "server_ca_file", str, "", "CA bundle used to verify backends with server_mode = verify-full."),
    # [pipeline]: optional per-query stages
    S("pipeline", "max_query_bytes", int, 64 << 20,
      "Reject SQL text longer than this with SQLSTATE 54000; 0 disables the stage.", min=0, reloadable=True),
    S("pipeline", "max_parse_bytes", int, 64 << 10,
      "SQL text longer than this is not parsed or searched on the event loop: it goes to the primary, and "
      "in pooled modes a client whose large statement may keep session state is pinned.", min=1024,
      reloadable=True),
    # [routing]: read/write splitting in transaction and statement pooling (needs standbys)
    S("routing", "enabled", bool, True, "Send reads to standbys when standbys are configured (pooled modes)."),
    S("routing", "strategy", str, "round_robin", "How a read picks among standbys.",
      choices=("round_robin", "weighted", "random", "least_connections", "latency"), reloadable=True),
    S("routing", "primary_reads", str, "if_no_standby", "Whether the primary also serves reads.",
      choices=("never", "always", "if_no_standby"), reloadable=True),
    S("routing", "read_only_functions", list, [],
      "Volatile functions that are still safe on a standby (beside the built-in list).", reloadable=True),
    S("routing", "volatile_functions", list, [],
      "Functions that always send a query to the primary, whatever the catalog says.", reloadable=True),
    S("routing", "max_lag_bytes", int, 16 << 20,
      "A standby whose replay is this many WAL bytes behind the primary gets no reads; 0 = no limit.",
      min=0, reloadable=True),
    S("routing", "max_lag_ms", float, 0.0,
      "A standby replaying more than this many ms behind gets no reads; 0 = no limit.", min=0, reloadable=True),
    S("routing", "lag_check_interval", float, 0.5, "Seconds between replication lag checks.", min=0.01,
      reloadable=True),
    S("routing", "cold_max_lag_ms", float, 0.0, "Reads of cold tables only may use a standby this far "
      "behind (no byte limit); 0 = cold tables get the usual limits (routing/tables.py).", min=0,
      reloadable=True),
    S("routing", "hot_window_s", float, 60.0, "A table written through the proxy in the last this many "
      "seconds is hot.", min=0, reloadable=True),
    S("routing", "cold_after_s", float, 600.0, "A table not written through the proxy for this long is cold.",
      min=0, reloadable=True),
    S("routing", "ryw_timeout", float, 0.05,
      "Seconds a read after the client's own write may wait for a standby to replay it, else primary.",
      min=0, reloadable=True),
    # [health]: probes of every node (topology/health.py)
    S("health", "interval", float, 1.0, "Seconds between probes of each node.", min=0.01, reloadable=True),
    S("health", "timeout", float, 2.0, "Seconds a probe may take (connect, login, query).", min=0.01,
      reloadable=True),
    S("health", "failure_threshold", int, 3, "Failed probes in a row that make a node unhealthy.", min=1,
      reloadable=True),
    S("health", "success_threshold", int, 2, "Good probes in a row that make it healthy again.", min=1,
      reloadable=True),
    S("health", "user", str, "postgres", "User the probes log in as (password: health.password or "
      "users_file).", reloadable=True),
    S("health", "password", str, "", "Password of health.user, when users_file has none.", secret=True,
      reloadable=True),
    S("health", "database", str, "postgres", "Database the probes connect to.", reloadable=True),
    # [topology]: where the proxy learns which node is the primary (topology/)
    S("topology", "provider", str, "postgres", "postgres: probes find the primary and follow promotions; "
      "patroni: Patroni decides (its DCS watched, dcs_url, or its REST API polled, patroni_url); standalone: "
      "only the admin API/CLI sets the primary; another name: a provider an installed package offers (entry-point "
      "group helios_proxy.topology), or module:attribute."),
    S("topology", "dcs_url", str, "", "provider = patroni through its DCS instead of its REST API: "
      "etcd3://HOST:PORT[,HOST:PORT...]; the proxy watches Patroni's leader and member keys (no polling)."),
    S("topology", "scope", str, "", "Patroni's scope (its cluster name), for dcs_url."),
    S("topology", "namespace", str, "/service", "Patroni's namespace, for dcs_url."),
    S("topology", "patroni_url", str, "", "Patroni REST API base URL (provider = patroni), e.g. "
      "http://127.0.0.1:8008, or several members' comma-separated (any one answering); its /cluster is "
      "polled every health.interval."),
    # [failover]: what happens when the primary is lost (topology/failover.py)
    S("failover", "mode", str, "external", "promote: the proxy runs pg_promote() on the best standby; "
      "command: it runs failover.promote_command; external: it waits for someone else to promote and follows.",
      choices=("promote", "command", "external"), reloadable=True),
    S("failover", "promote_command", str, "", "Shell command for mode = command; {node} {host} {port} "
      "{old_primary} are replaced.", reloadable=True),
    S("failover", "fence_command", str, "", "Shell command run on a planned switchover to fence the old "
      "primary (e.g. stop it); {node} {host} {port} are replaced.", reloadable=True),
    S("failover", "command_timeout", float, 60.0, "Seconds promote/fence commands and pg_promote() may take.",
      min=1, reloadable=True),
    S("failover", "max_failover_lag_bytes", int, 16 << 20, "Never promote a standby this many WAL bytes "
      "behind the last position seen on the primary; 0 = no limit.", min=0, reloadable=True),
    S("failover", "repoint_standbys", bool, True, "After a promotion, point the other standbys at the new "
      "primary (ALTER SYSTEM SET primary_conninfo + reload; needs a superuser as health.user).",
      reloadable=True),
    S("failover", "buffer_timeout", float, 15.0, "Seconds a write waits for a confirmed primary during a "
      "failover or switchover before it fails with 57P03.", min=0, reloadable=True),
    S("failover", "buffer_max_queries", int, 1000, "Most clients waiting for a primary at once; more fail "
      "at once with 57P03.", min=0, reloadable=True),
    S("failover", "switchover_timeout", float, 10.0, "Planned switchover: seconds in-flight transactions "
      "get to finish, and the target to replay all WAL.", min=0, reloadable=True),
    # [replay]: transaction replay across a failover (continuity/journal.py, continuity/replay.py)
    S("replay", "enabled", bool, True, "Journal each client's open transaction and, when its primary fails, "
      "re-run it on the new primary and go on unnoticed (session settings and prepared statements move "
      "too); results that differ abort it with 40001. Costs some CPU per query (docs/performance.md); "
      "applies to sessions that log in after a change.", reloadable=True),
    S("replay", "max_journal_bytes", int, 1 << 20, "Most bytes of requests journaled per transaction; a "
      "larger transaction is not replayed (its client gets the connection error, as without replay).",
      min=0, reloadable=True),
    S("replay", "replay_attempts", int, 3, "Tries to replay one transaction (each on a newly confirmed "
      "primary) before its client gets the connection error.", min=1, reloadable=True),
    S("replay", "checksum", bool, True, "Compare what the replay answers with what the client already "
      "received (a checksum of every byte); false: trust the replay (MaxScale's "
      "transaction_replay_checksum = false). Keep it on.", reloadable=True),
    S("replay", "timeout", float, 30.0, "Seconds one replay may take after a new server connection is "
      "open (re-running the journal and reading its answers).", min=0.1, reloadable=True),
    # [cache]: the query cache (cache/)
    S("cache", "enabled", bool, False, "Answer repeated reads outside transaction blocks from the proxy "
      "(complete wire answers; needs the [redis] extra for redis_url). Keyed by database, user, the "
      "settings that change results and the constant-free parse tree; invalidated by writes."),
    S("cache", "max_bytes", int, 64 << 20, "Most bytes of answers in this process's hot tier (L1); the "
      "least recently used go first.", min=0),
    S("cache", "max_entry_bytes", int, 1 << 20, "A larger answer is not cached.", min=1),
    S("cache", "ttl_s", float, 60.0, "Seconds an entry lives at most (aggregates x4, vector searches x2; "
      "a /*+ cache_ttl=N */ hint or a [[cache.rules]] entry may say otherwise).", min=0),
    S("cache", "invalidation", str, "proxy", "\"proxy\": writes through HeliosProxy invalidate (and, with "
      "redis_url, through every proxy sharing it); \"logical\": writes made straight on PostgreSQL too, read "
      "from a temporary logical replication slot (needs wal_level = logical and a health.user that may "
      "create slots).", choices=("proxy", "logical")),
    S("cache", "redis_url", str, "", "The warm tier (L2) shared by proxies, and their invalidations "
      "(redis://[:password@]host:port/db); empty: this process only.", secret=True),
    S("cache", "catalog_refresh_s", float, 60.0, "Seconds between reloads of a database's relations and "
      "function volatilities (DDL through the proxy reloads at once).", min=1),
    S("cache", "logical_poll_s", float, 0.2, "invalidation = \"logical\": seconds between reads of the slot.",
      min=0.01),
    S("cache", "logical_retry_s", float, 5.0, "Seconds before a failed slot is tried again (the database is "
      "not cached meanwhile).", min=0.1),
    S("cache", "logical_max_lag_bytes", int, 64 << 20, "A slot further behind the primary's WAL is dropped "
      "(its database's entries voided) and made anew; 0 = no limit.", min=0),
    S("cache", "max_fingerprints", int, 1000, "Query shapes whose workload class and hit counts GET /cache "
      "keeps.", min=1),
    # [circuit_breaker]: circuit breakers per node (topology/breaker.py)
    S("circuit_breaker", "enabled", bool, False, "Keep traffic away from a node whose leases fail (connections "
      "refused, 53300, 57P03, class 58, XX000) even while its health probes pass: reads go elsewhere, "
      "transactions for an open primary fail at once with 57P03.", reloadable=True),
    S("circuit_breaker", "window_s", float, 10.0, "Outcomes of this many seconds count.", min=0.1, reloadable=True),
    S("circuit_breaker", "min_requests", int, 10, "Fewest outcomes in the window to trip on.", min=1, reloadable=True),
    S("circuit_breaker", "failure_rate", float, 0.5, "Share of failed outcomes that trips the breaker.", min=0.01,
      max=1.0, reloadable=True),
    S("circuit_breaker", "open_s", float, 5.0, "Seconds an open breaker keeps reads away before trying again.",
      min=0.1, reloadable=True),
    S("circuit_breaker", "max_open_s", float, 60.0, "The longest open time (it doubles on every trip in a row).",
      min=0.1, reloadable=True),
    S("circuit_breaker", "half_open_requests", int, 3, "Outcomes that must all succeed to close it again.", min=1,
      reloadable=True),
    # [analytics]: query analytics (analytics/)
    S("analytics", "enabled", bool, False, "Keep statistics per query shape (pglast fingerprint): calls, errors, "
      "rows, latency quantiles, intent; the slow-query log; N+1 detection (GET /analytics/...)."),
    S("analytics", "max_fingerprints", int, 5000, "Most shapes kept; beyond, the least called 5 % are folded "
      "into one `other` entry.", min=10, reloadable=True),
    S("analytics", "slow_query_ms", float, 1000.0, "A query taking this long or longer is a slow query "
      "(slow_log, GET /analytics/slow); 0 disables.", min=0, reloadable=True),
    S("analytics", "slow_log", str, "", "JSON lines file of slow queries (normalized text, no literal values "
      "unless log_parameters); empty: only GET /analytics/slow.", reloadable=True),
    S("analytics", "slow_log_max_bytes", int, 10 << 20, "Rotate slow_log at this size.", min=1024,
      reloadable=True),
    S("analytics", "slow_log_files", int, 5, "Rotated slow_log files kept (slow_log.1 ...).", min=0,
      reloadable=True),
    S("analytics", "log_parameters", bool, False, "Also write the query text as sent, literal values and "
      "all, into slow_log entries (query_text).", reloadable=True),
    S("analytics", "n_plus_one_threshold", int, 20, "Report a shape run this many times in a row in one "
      "transaction (or within n_plus_one_window_ms); 0 disables.", min=0, reloadable=True),
    S("analytics", "n_plus_one_window_ms", float, 100.0, "Outside a transaction: executions this close "
      "together continue a run.", min=0, reloadable=True),
    S("analytics", "prometheus_top", int, 20, "Shapes with the most total time exported to /metrics, "
      "labeled by fingerprint (bounded cardinality).", min=0, reloadable=True),
    # [fleet]: several proxies in front of one cluster (limits/fleet.py, topology/fleet.py)
    S("fleet", "name", str, "", "This proxy's name in its fleet (with several workers, /N is added for each); "
      "set, with dcs_url or redis_url, it registers there (GET /fleet on any member lists the live ones and the "
      "primary each sees). Default: host:port."),
    S("fleet", "cluster", str, "default", "The fleet's name: the proxies in front of one cluster share it (their "
      "keys live under it in etcd and Redis)."),
    S("fleet", "dcs_url", str, "", "etcd the fleet coordinates through (etcd3://HOST:PORT[,HOST:PORT...]): members "
      "register under a lease, cancel requests reach the member that owns their key, and with failover.mode = "
      "\"promote\" one member at a time holds the failover lock and promotes only when most live members see "
      "the primary down; every member follows the decision (topology/fleet_dcs.py)."),
    S("fleet", "ttl", int, 5, "Seconds a member's registration (and the failover lock it holds) outlives its "
      "last keep-alive in etcd.", min=2),
    S("fleet", "advertise", str, "", "host:port the other members reach this one's client port at (cancel "
      "requests they forward); default: the listen address (127.0.0.1 for a wildcard one)."),
    S("fleet", "peer_id", int, 0, "This member's number (1-255) in the cancel keys it hands out, as PgBouncer's "
      "peer_id; 0: the lowest free one is claimed in etcd.", min=0, max=255),
    S("fleet", "redis_url", str, "", "Token-bucket [[limits]] held for the whole fleet of proxies on this Redis "
      "(redis://[:password@]host:port/db); each proxy leases tokens in chunks (limit_chunk), so the fleet never "
      "admits more than the configured rate. Empty: each proxy holds its own.", secret=True),
    S("fleet", "limit_chunk", int, 10, "Tokens a proxy leases from Redis at a time (one round trip per this many "
      "executions); unused ones expire after a second.", min=1, reloadable=True),
    S("fleet", "when_redis_down", str, "open", "open: limits shared through Redis admit what this proxy's own "
      "share would while Redis cannot be reached (rate / fleet.members); closed: they refuse (53400).",
      choices=("open", "closed"), reloadable=True),
    S("fleet", "members", int, 1, "How many proxies share the limits (the share each keeps while Redis is down).",
      min=1, reloadable=True),
    # [tenancy]: multi-tenancy (tenancy/)
    S("tenancy", "enabled", bool, False, "Every login belongs to a [[tenants]] entry, identified as `identify` "
      "says; unknown tenants are refused."),
    S("tenancy", "identify", str, "user_suffix", "user_suffix: the part after the last '.' of the user name "
      "(app.acme logs in to PostgreSQL as app); database: the database name; sni: the first label of the TLS "
      "server name (acme.db.example.com); jwt_claim: the tenant_claim of the JWT the client logged in with "
      "(auth method jwt).", choices=("user_suffix", "database", "sni", "jwt_claim")),
    S("tenancy", "tenant_claim", str, "tenant", "identify = jwt_claim: the claim naming the tenant."),
    S("tenancy", "key_file", str, "", "The key that signs each session's tenant for helios.tenant() (hex; made "
      "by `helios-proxy tenancy install`, mode 0600); default: the config file's path + .tenancy-key.",
      reloadable=True),
    S("tenancy", "tenant_secrets", str, "optional", "optional: a users_file line for user.tenant (the PostgreSQL "
      "user, a dot, the tenant) is that tenant's own password, else the user's line is (**one password opens "
      "every tenant of that user**); required: a tenant logs in only with a line of its own.",
      choices=("optional", "required"), reloadable=True),
    S("tenancy", "tenants_file", str, "", "Where tenants added, changed or removed through the admin API are "
      "kept (JSON); default: the config file's path + .tenants.json.", reloadable=True),
    # [graphql]: the GraphQL gateway (graphql/), at /graphql on the admin listener
    S("graphql", "enabled", bool, False, "Serve a GraphQL API generated from the catalog at /graphql (the "
      "[graphql] extra: graphql-core)."),
    S("graphql", "database", str, "postgres", "The database it serves."),
    S("graphql", "user", str, "postgres", "The user the gateway logs in as (its credentials as for any pool); "
      "each request then runs SET LOCAL ROLE to its own role, so that user must be a member of those roles."),
    S("graphql", "anonymous_role", str, "", "The role of requests without a bearer token; empty: such requests "
      "are refused (401)."),
    S("graphql", "max_depth", int, 10, "Deeper queries are refused before anything runs.", min=1, reloadable=True),
    S("graphql", "max_tokens", int, 5000, "A query text of more tokens is refused while it is parsed (graphql-core "
      "stops there).", min=100, reloadable=True),
    S("graphql", "max_cost", int, 2000, "Refused before anything runs when costlier: every field counts 1, each "
      "alias and fragment use again, and an introspection root (__schema, __type) 100.", min=1, reloadable=True),
    S("graphql", "max_response_bytes", int, 16 << 20, "An answer larger than this (JSON) is replaced by an error.",
      min=1024, reloadable=True),
    S("graphql", "max_rows", int, 1000, "Rows of one field at most (its limit is capped to this).", min=1,
      reloadable=True),
    S("graphql", "statement_timeout_ms", int, 5000, "statement_timeout of a request's statements.", min=1,
      reloadable=True),
    S("graphql", "schema_ttl_s", float, 10.0, "A role's schema is read again from the catalog after this long "
      "(at once after DDL through a pooled client of the proxy, or POST /graphql/refresh).", min=0,
      reloadable=True),
    # [batch]: INSERT coalescing (batch/)
    S("batch", "enabled", bool, False, "Coalesce single-row autocommit INSERTs of pooled clients into multi-row "
      "INSERTs (one statement, one commit), for the tables listed.", reloadable=True),
    S("batch", "tables", list, [], "Tables whose INSERTs may be batched (names, schema.name, globs; \"*\": all).",
      reloadable=True),
    S("batch", "max_rows", int, 1000, "Rows of one batch at most.", min=1, reloadable=True),
    S("batch", "max_delay_ms", float, 2.0, "How long the first row waits for companions.", min=0,
      reloadable=True),
    S("batch", "max_bytes", int, 1 << 20, "Bytes of rows of one batch at most.", min=1024, reloadable=True),
    # [log]
    S("log", "level", str, "info", "Log level.", choices=("debug", "info", "warning", "error"), reloadable=True),
    S("log", "file", str, "", "Also log to this file (appended; reopened when logrotate moves it)."),
    S("log", "connections", bool, True, "Log one line per client connect, login and disconnect.",
      reloadable=True),
)

# [databases.NAME] and [users.NAME]: per-database and per-user overrides (unset keys inherit [pool]).
DATABASE_SETTINGS = (
    S("databases", "mode", str, None, "Pool mode for this database.", choices=("session", "transaction",
                                                                               "statement")),
    S("databases", "max_size", int, None, "max_size of this database's pools.", min=1),
    S("databases", "min_size", int, None, "min_size of this database's pools.", min=0),
    S("databases", "dbname", str, None, "The database's name on the server: clients connect to NAME, the "
      "server sees dbname (an alias, as PgBouncer's dbname=); default NAME."),
    S("databases", "host", str, None, "Serve this database from this PostgreSQL server instead of the "
      "cluster's [[nodes]] (PgBouncer's host=): all its traffic goes there, with no read/write split, "
      "health checks or failover."),
    S("databases", "port", int, None, "Port of host (default 5432).", min=1, max=65535),
)
USER_SETTINGS = (
    S("users", "mode", str, None, "Pool mode for this user (wins over the database's).",
      choices=("session", "transaction", "statement")),
    S("users", "max_connections", int, None, "Most server connections for this user over all its pools.",
      min=1),
)

# [[limits]]: the rate limiter (limits/), one table per limit.
LIMIT_SETTINGS = (
    S("limits", "name", str, None, "The limit's name (in errors, /limits and metrics)."),
    S("limits", "kind", str, "token_bucket", "token_bucket (rate + burst), sliding_window (max_queries per "
      "window_s) or concurrency (max queries running at once).",
      choices=("token_bucket", "sliding_window", "concurrency")),
    S("limits", "key", str, "user", "What is limited separately: each user, database, client_address, "
      "tenant ([tenancy]) or query fingerprint.", choices=("user", "database", "client_address", "tenant",
                                                            "fingerprint")),
    S("limits", "match", str, "", "Only keys matching this glob (e.g. a user name pattern); empty: all."),
    S("limits", "rate", float, 100.0, "token_bucket: queries per second.", min=0.001),
    S("limits", "burst", int, 100, "token_bucket: queries allowed at once above the rate.", min=1),
    S("limits", "window_s", float, 1.0, "sliding_window: the window.", min=0.001),
    S("limits", "max_queries", int, 100, "sliding_window: queries allowed in any window.", min=1),
    S("limits", "max", int, 10, "concurrency: queries running at once.", min=1),
    S("limits", "on_exceed", str, "reject", "reject (SQLSTATE 53400 naming the limit) or wait (at most "
      "max_wait_ms, then 53400).", choices=("reject", "wait")),
    S("limits", "max_wait_ms", int, 30000, "on_exceed = wait: the longest wait (concurrency guards: in line, "
      "first come first served).", min=0),
)

# [[tenants]]: one table per tenant (tenancy/).
TENANT_SETTINGS = (
    S("tenants", "name", str, None, "The tenant's name (the user name's suffix, or the database)."),
    S("tenants", "isolation", str, "rls", "rls: helios.tenant is set to the name in every transaction (for row "
      "level security) and the client cannot change it; schema: search_path fixed to `schema`; database: "
      "its own `database`.", choices=("rls", "schema", "database")),
    S("tenants", "schema", str, "", "isolation = schema: the schema (default: the name)."),
    S("tenants", "database", str, "", "isolation = database: the database (default: the name)."),
    S("tenants", "max_client_conn", int, 0, "Client connections of the tenant at once; beyond: 53300. 0: no "
      "limit.", min=0),
    S("tenants", "pool_size", int, 0, "Server connections of the tenant's own pools (per node); 0: it shares "
      "its user's pools with the other tenants.", min=0),
    S("tenants", "statement_timeout_ms", int, 0, "statement_timeout of its sessions; 0: the server's.", min=0),
    S("tenants", "qps", float, 0.0, "Queries per second of the tenant (a token bucket, burst = qps); beyond: "
      "53400. 0: no limit.", min=0),
)

# [[rewrite]]: the query rewriter (rewrite/), applied in order.
REWRITE_SETTINGS = (
    S("rewrite", "name", str, None, "The rule's name (in errors, logs and GET /rewrite)."),
    S("rewrite", "match", str, "", "Regular expression (Python syntax, case insensitive) the query text must "
      "contain; empty: any text."),
    S("rewrite", "fingerprint", str, "", "Only queries of this pglast fingerprint (as GET /analytics/queries "
      "shows it)."),
    S("rewrite", "replace", str, None, "Replace what match found with this (groups as \\1 or \\g<name>)."),
    S("rewrite", "schema_prefix", str, "", "Qualify every unqualified table with this schema (the query is "
      "printed back from its parse tree)."),
    S("rewrite", "normalize", bool, False, "Drop comments (but /*+ hints */) and make spacing one space."),
    S("rewrite", "hint", str, "", "Put /*+ hint */ in front, e.g. \"route=standby\" or \"cache_ttl=30\"."),
    S("rewrite", "database", str, "", "Only for this database (name or glob); empty: all."),
    S("rewrite", "user", str, "", "Only for this user (name or glob); empty: all."),
    S("rewrite", "apply", str, "all", "first: no later rule runs after this one applied; all: go on.",
      choices=("first", "all")),
    S("rewrite", "dry_run", bool, False, "Count and log (normalized texts) what it would change; change nothing."),
    S("rewrite", "in_literals", bool, False, "replace also inside string and dollar-quoted literals (the data a "
      "query carries); off: only the SQL outside them is rewritten."),
)

# [[auth.rules]]: ordered like pg_hba.conf, the first that matches a login decides its method.
AUTH_RULE_SETTINGS = (
    S("auth.rules", "database", str, "all", "Database name, glob, or all."),
    S("auth.rules", "user", str, "all", "User name, glob, or all."),
    S("auth.rules", "address", str, "all", "Client address range (CIDR, e.g. 10.0.0.0/8 or ::1/128), or all "
      "(the Unix socket matches all only)."),
    S("auth.rules", "method", str, None, "trust, reject, md5, scram-sha-256, jwt, api_key, oauth2, cert or ldap.",
      choices=METHODS),
    S("auth.rules", "allow_plaintext", bool, False, "jwt, api_key, oauth2 and ldap send a secret in clear: refused "
      "without TLS (or the Unix socket) unless this is true."),
)
# [auth.jwt]: the jwt method (pyjwt; the [jwt] extra for RS256/ES256).
AUTH_JWT_SETTINGS = (
    S("auth.jwt", "public_key_file", str, "", "PEM public key that verifies RS256/ES256 tokens."),
    S("auth.jwt", "jwks_file", str, "", "JSON Web Key Set file (keys chosen by the token's kid); re-read "
      "when it changes."),
    S("auth.jwt", "jwks_url", str, "", "JSON Web Key Set URL (keys chosen by kid), fetched and cached for "
      "jwks_refresh_s; a kid not in the cache fetches it again (at most every 30 s)."),
    S("auth.jwt", "jwks_refresh_s", float, 300.0, "Seconds a fetched key set is used.", min=1),
    S("auth.jwt", "secret", str, "", "Shared secret that verifies HS256 tokens.", secret=True),
    S("auth.jwt", "algorithms", list, ["RS256", "ES256"], "Algorithms accepted (of RS256, ES256, HS256)."),
    S("auth.jwt", "issuer", str, "", "Required iss claim (empty: not checked)."),
    S("auth.jwt", "audience", str, "", "Required aud claim (empty: not checked)."),
    S("auth.jwt", "leeway_s", float, 30.0, "Clock skew allowed on exp and nbf.", min=0),
    S("auth.jwt", "user_claim", str, "sub", "The claim that names the user: it must equal the login user, "
      "or map to it through [auth.map]."),
)
# [auth.oauth2]: the oauth2 method (RFC 7662 token introspection).
AUTH_OAUTH2_SETTINGS = (
    S("auth.oauth2", "introspection_url", str, "", "The authorization server's introspection endpoint."),
    S("auth.oauth2", "client_id", str, "", "The proxy's client id there (HTTP Basic auth)."),
    S("auth.oauth2", "client_secret", str, "", "The proxy's client secret there.", secret=True),
    S("auth.oauth2", "user_claim", str, "username", "The answer's field naming the user (else sub): it must "
      "equal the login user, or map to it through [auth.map]."),
    S("auth.oauth2", "cache_ttl_s", float, 60.0, "Answers are reused until the token's exp, at most this long.",
      min=0),
    S("auth.oauth2", "timeout_s", float, 5.0, "Seconds the endpoint may take.", min=0.1),
)
# [auth.ldap]: the ldap method (ldap3; the [ldap] extra).
AUTH_LDAP_SETTINGS = (
    S("auth.ldap", "url", str, "", "ldap://host:port or ldaps://host:port of the directory."),
    S("auth.ldap", "bind_dn", str, "", "Simple bind: the DN to bind as, {user} replaced by the user name "
      "(e.g. uid={user},ou=people,dc=example,dc=com). Empty: search+bind."),
    S("auth.ldap", "base_dn", str, "", "Search+bind: where the user's entry is searched."),
    S("auth.ldap", "search_filter", str, "(uid={user})", "Search+bind: the filter, {user} replaced."),
    S("auth.ldap", "search_bind_dn", str, "", "Search+bind: the DN that searches (empty: anonymously)."),
    S("auth.ldap", "search_bind_password", str, "", "Its password.", secret=True),
    S("auth.ldap", "starttls", bool, False, "StartTLS before binding (for ldap:// URLs)."),
    S("auth.ldap", "timeout_s", float, 5.0, "Seconds each step (connect, bind, search) may take.", min=0.1),
)
# [auth.cert]: the cert method (TLS client certificates).
AUTH_CERT_SETTINGS = (
    S("auth.cert", "ca_file", str, "", "CA certificate(s) (PEM) that client certificates must be signed by."),
    S("auth.cert", "use_san", bool, False, "Also accept the certificate's subjectAltNames (DNS, email) as the user "
      "name; off: the subject's CN only, as PostgreSQL's cert method (a subject with several CNs is refused)."),
)
# [auth.api_keys]: the api_key method.
AUTH_API_KEY_SETTINGS = (
    S("auth.api_keys", "file", str, "", "Where keys are stored, hashed (scrypt): helios-proxy apikey "
      "create/list/revoke manage it."),
)

# [[routing.tables]]: schema routing (routing/tables.py), the first rule matching a table decides for it.
ROUTING_TABLE_SETTINGS = (
    S("routing.tables", "match", str, None, "schema.table, schema.* or a table name (any schema, and unqualified "
      "references)."),
    S("routing.tables", "node", str, "", "Reads of it go to this node (a node name, primary or standby)."),
    S("routing.tables", "temperature", str, "", "Declared temperature: hot (needs max_lag_ms), warm, or cold "
      "(routing.cold_max_lag_ms); empty: learned from writes.", choices=("hot", "warm", "cold")),
    S("routing.tables", "max_lag_ms", float, 0.0, "Hot: the most lag a standby may have to serve it "
      "(0: routing.max_lag_ms).", min=0),
)

# [[cache.rules]]: per table; every rule matching a table the query reads applies (the strictest wins).
CACHE_RULE_SETTINGS = (
    S("cache.rules", "table", str, None, "Relation name or glob (`orders`, `report_*`); a schema prefix is "
      "ignored: rules apply to the bare name, in every schema."),
    S("cache.rules", "cache", bool, True, "false: queries reading it are never cached."),
    S("cache.rules", "ttl_s", float, None, "Seconds its entries live (the smaller of this and the other "
      "rules' / cache.ttl_s).", min=0),
    S("cache.rules", "stable_functions", bool, False, "Queries reading it may call stable functions such "
      "as now(), cached for ttl_s."),
)

NODE_SETTINGS = (
    S("nodes", "name", str, None, "Unique node name."),
    S("nodes", "host", str, "127.0.0.1", "Host name or address of the PostgreSQL server."),
    S("nodes", "port", int, 5432, "Port of the PostgreSQL server.", min=1, max=65535),
    S("nodes", "role", str, "primary", "Configured role; the topology may learn otherwise.",
      choices=("primary", "standby")),
    S("nodes", "weight", int, 1, "Relative share of reads for load balancing.", min=0),
    S("nodes", "priority", int, 0, "Failover preference among equals (higher first).",),
    S("nodes", "enabled", bool, True, "false: the node gets no traffic (applied on reload too)."),
    S("nodes", "application_name", str, "", "The name this standby streams under (primary_conninfo "
      "application_name, as in synchronous_standby_names); default: the node name."),
)
