"""A session's route state: where its next lease goes and what that lease must have seen. Written
where the pipeline's decisions are applied (frontend/forward.py `Forwarder.apply`, a prepared
statement's Bind going where its Parse went, a cache miss's fill) and taken, once, when the next
lease is made (frontend/session.py); the client's last write position is kept for read-your-writes."""


class RouteState:
    __slots__ = ("next_target", "next_lag", "next_tables", "override", "ryw_lsn", "statement")

    def __init__(self):
        self.next_target = None  # (primary|standby, node name or None) for the next lease (route stage)
        self.next_lag = None     # and its lag requirement, the tables it reads (schema routing)
        self.next_tables = None
        self.override = None     # SET helios.route: primary|standby|None (auto), for later transactions
        self.ryw_lsn = None      # WAL position of the client's last primary transaction
        self.statement = None    # (name, target): the route of the statement being prepared, when not its Parse's

    def aim(self, target, lag=None, tables=None):
        self.next_target, self.next_lag, self.next_tables = target, lag, tables

    def take(self):
        """(target, node name, lag, tables) for the lease being made; the aim is used up."""
        target, node_name = self.next_target or ("primary", None)
        lag, tables = self.next_lag, self.next_tables
        self.next_target = self.next_lag = self.next_tables = None
        return target, node_name, lag, tables

    def aim_statement(self, name, target):
        """The named statement being parsed has a route of its own (its Parse goes where SET
        helios.route says; its later Binds follow its own route once that is undone)."""
        self.statement = (name, target)

    def route_of(self, name, default):
        """The route statement name, prepared now, keeps for its later Binds: its own, else default."""
        own, self.statement = self.statement, None
        return own[1] if own is not None and own[0] == name else default

    def route_later(self, override):
        """SET helios.route: primary, standby or None (automatic) for later transactions."""
        self.override = override

    def wrote(self, lsn):
        """The WAL position after the client's last transaction on the primary (read-your-writes)."""
        self.ryw_lsn = lsn

    def read_after(self, lsn):
        """Later reads must see WAL position lsn (a write, or SET helios.read_after)."""
        self.ryw_lsn = max(lsn, self.ryw_lsn or 0)
