"""A fleet of proxies coordinated through etcd (`[fleet] dcs_url`): one failover decision for all
of them, and cancel requests that reach their query whichever member receives them.

Keys, under `/helios/{fleet.cluster}/`:

    members/NAME   this member: its addresses, process, peer id        (bound to its lease)
    views/NAME     what it sees: nodes it finds down, the primary       (bound to its lease)
    ids/N          peer id N (1-255, in its cancel keys) is NAME's      (bound to its lease)
    lock           the failover lock: NAME of the member holding it      (bound to its lease)
    switching      a planned switchover in progress {from, to, by, at}  (bound to its lease)
    drained/NAME   the switching value NAME drained its transactions for (bound to its lease)
    decision       the last failover/switchover {epoch, primary, timeline, old, by, at}   (kept)
    disabled/NODE  a node the operator disabled at any member: why       (kept until enabled)

Each member keeps a lease of `fleet.ttl` seconds alive; if it dies or loses etcd, its keys go
with the lease and the others count it out. Every member watches the prefix (one stream, no
polling), so what one writes reaches the others within milliseconds.

Failover (`failover.mode = "promote"` or `"command"`): a member whose primary is lost asks, in
etcd's standard election recipe, for the lock (created only if absent, bound to its lease). The
holder promotes only when a majority of the live members' views say the primary is down; it fences
the old primary (tracker, `failover.fence_command`, and made read-only with its sessions ended if
it still answers), promotes the best standby, and writes the decision with the next epoch. Every
member follows a decision it sees (the old primary fenced, the new one taken), not its own probes.
A member that alone loses the primary finds no majority and promotes nothing; with etcd out of
reach no member promotes, each keeps the primary it knows.

A member that starts knows nothing of the fleet yet: until its first read of the keys is applied
(the decisions followed, the disabled nodes fenced) it holds every write transaction in the
switchover buffer, as during a switchover (the proxy waits up to health.timeout + 1 s for that read
before it accepts clients). A node the fleet disabled, or an old primary a decision replaced that
still answers as one, never takes a starting member's writes; with etcd out of reach at start, the
writes wait (failover.buffer_timeout, then 57P03 naming the fleet) as Patroni's would.
"""
import json
import logging
import os
import socket
import time

import gevent
from gevent.event import Event

from ..auth import api_keys
from .etcd import Etcd, Follower, Mirror
from .events import HealthChanged, PrimaryChanged
from .nodeops import NodeOperationFailed
from .switchover import drain
from .tracker import CONFIRMED

log = logging.getLogger(__name__)
RETRY_S = 0.5
PEER_IDS = range(1, 256)
FLEET_FENCE = "disabled for the fleet: "
UNREAD = ("the fleet's state in etcd (fleet.dcs_url) is not read yet: its decisions and disabled nodes "
          "are followed first")


def proxy_name(config):
    """This proxy's name in the fleet: [fleet] name, default host:port."""
    return config.fleet.name or f"{socket.gethostname()}:{config.server.listen.rpartition(':')[2]}"


def member_name(config, worker):
    """This member's name: the proxy's, with /worker when it has several (each worker is a member)."""
    return f"{proxy_name(config)}/{worker[0]}" if worker[1] > 1 else proxy_name(config)


def agree_on_primary(views):
    """Whether the members that have told what they see name one primary. A member that has not yet
    (just registered, its first health check to come) disagrees with no one."""
    return len({v["primary"] for v in views if v and v.get("primary")}) <= 1


def advertised(config):
    """host:port the other members reach this one's client port at."""
    if config.fleet.advertise:
        return config.fleet.advertise
    host, _, port = config.server.listen.rpartition(":")
    host = host.strip("[]")
    return f"{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


class FleetCoordinator(Follower):
    def __init__(self, proxy):
        config = proxy.config
        self.proxy, self.config = proxy, config
        self.etcd = Etcd(config.fleet.dcs_url, "fleet.dcs_url")
        self.prefix = f"/helios/{config.fleet.cluster}/"
        self.me = member_name(config, proxy.worker)
        self.proxy_name = proxy_name(config)  # (its workers share one peer id)
        self.lease = None
        self.peer_id = 0            # the number in this member's cancel keys (0: none yet)
        self.mirror = Mirror(self.etcd, self.prefix)  # the fleet's keys (without the prefix), as watched
        self.epoch = 0              # of the last decision followed
        self.decisions = []         # the last decisions seen (for /fleet)
        self.error = None
        self.refusal = None         # why the last failover attempt promoted nothing
        self.changed = Event()      # health or primary changed: publish the view now
        self.paused_for = None      # another member's switchover this one holds transactions for
        self._api_keys = (None, {})  # (revision, {id: entry}) of apikeys/
        self.greenlets = []
        proxy.tracker.subscribe(self.on_event)
        proxy.cancels.fleet = self
        api_keys.METHOD.fleet = self  # (the api_key method reads the fleet's keys: apikeys/ below)
        if proxy.tenants is not None:  # (runtime changes to the tenants: tenants/ below)
            proxy.tenants.changes = TenantChanges(self)
        self.tenants_seen = None    # the tenants/ keys last applied
        self.read = Event()         # set once the fleet's keys were read and applied (writes wait until then)

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self):
        """Join the fleet: writes are held until its keys are read (UNREAD), the watch begins."""
        self.proxy.buffer.pause(UNREAD)
        self.greenlets = [gevent.spawn(self._keep_registered), gevent.spawn(self._watch)]

    def first_read(self, timeout):
        """Wait up to timeout for the first read of the fleet's keys; whether it came."""
        if not self.read.wait(timeout):
            log.warning("fleet: etcd (%s) not read within %g s; write transactions wait until it is",
                        self.config.fleet.dcs_url, timeout)
        return self.read.is_set()

    def stop(self):
        for g in self.greenlets:
            g.kill(block=False)
        self.greenlets = []
        if self.lease is not None:  # leave at once (the others need not wait for the TTL)
            with gevent.Timeout(1, False):
                try:
                    self.etcd.revoke(self.lease)
                except OSError:
                    pass
            self.lease = None

    def on_event(self, event):
        if isinstance(event, (HealthChanged, PrimaryChanged)):
            self.changed.set()

    # --- registration ----------------------------------------------------------------------------
    def record(self):
        proxy = self.proxy
        return {"name": self.me, "proxy": self.proxy_name, "address": advertised(self.config), "admin": self.config.admin.listen,
                "pid": os.getpid(), "worker": proxy.worker[0], "peer_id": self.peer_id, "since": time.time()}

    def view(self):
        """What this member sees, for the others' majority count."""
        tracker, health = self.proxy.tracker, self.proxy.health
        down = sorted(n.name for n in self.config.nodes if not health.healthy(n))
        return {"name": self.me, "down": down, "primary": tracker.primary, "state": tracker.state, "at": time.time()}

    def _keep_registered(self):
        ttl = self.config.fleet.ttl
        while True:
            try:
                if self.lease is not None and not self.etcd.keepalive(self.lease):
                    log.warning("fleet: my etcd lease expired; registering again")
                    self.lease = None
                if self.lease is None:
                    self._register(ttl)
                elif self.peer_id and not self._holds_peer_id(self.peer_id):  # (a sibling worker's lease held it)
                    self._register(ttl)
                self.etcd.put(self.prefix + f"views/{self.me}", json.dumps(self.view()), self.lease)
                if self.error is not None:
                    log.warning("fleet: etcd reachable again")
                self.error = None
            except OSError as e:
                if self.error is None:
                    log.error("fleet: etcd unreachable (%s): no failover is decided meanwhile; the primary "
                              "stays as it was", e)
                self.error = str(e)
            self.changed.clear()
            self.changed.wait(ttl / 3 if self.error is None else RETRY_S)

    def _register(self, ttl):
        self.lease = self.etcd.grant(ttl)
        self.peer_id = self._claim_peer_id()
        self.proxy.cancels.peer_id = self.peer_id
        self.etcd.put(self.prefix + f"views/{self.me}", json.dumps(self.view()), self.lease)  # (listed with it)
        self.etcd.put(self.prefix + f"members/{self.me}", json.dumps(self.record()), self.lease)
        log.info("fleet: registered as %s (peer id %d) in %s", self.me, self.peer_id, self.prefix)

    def _holds_peer_id(self, n):
        """Whether ids/n is this proxy's (claimed under this lease if it was free)."""
        created, holder = self.etcd.create(self.prefix + f"ids/{n}", self.proxy_name, self.lease)
        return created or holder == self.proxy_name

    def _claim_peer_id(self):
        """A peer id for this proxy (its workers share it): the configured one, else the one it had,
        else the lowest free one."""
        wanted = self.config.fleet.peer_id
        for n in ([wanted] if wanted else [self.peer_id] * bool(self.peer_id) + list(PEER_IDS)):
            created, holder = self.etcd.create(self.prefix + f"ids/{n}", self.proxy_name, self.lease)
            if created or holder == self.proxy_name:
                return n
            if wanted:
                log.error("fleet: peer id %d is %s's; cancel requests for this member are not routed "
                          "across the fleet", n, holder)
                return 0
        log.error("fleet: no free peer id (255 members?); cancel requests are not routed across the fleet")
        return 0

    # --- watching --------------------------------------------------------------------------------
    def _watch(self):
        while True:
            try:
                self.mirror.follow(lambda first: self.apply(starting=first and self.epoch == 0))
            except OSError as e:
                if self.error is None:
                    self.error = str(e)
            gevent.sleep(RETRY_S)

    def apply(self, starting=False):
        """Follow a decision newer than the last one followed; hold new transactions while another
        member switches over."""
        decision = self.mirror.json("decision")
        if decision and decision.get("epoch", 0) > self.epoch:
            self.follow(decision, starting)
        self._disabled()
        self._tenants()
        switching = self.mirror.json("switching")
        buffer = self.proxy.buffer
        if not self.read.is_set():  # the first read: the start's hold ends (another member's switchover may hold next)
            self.read.set()
            if buffer.paused == UNREAD:
                buffer.resume()
        if switching and switching.get("by") != self.me and not buffer.paused:
            buffer.pause(f"switchover from {switching.get('from')} to {switching.get('to')} by {switching.get('by')}")
            self.paused_for = switching
            self.greenlets = [g for g in self.greenlets if not g.dead]
            self.greenlets.append(gevent.spawn(self._drain_for, self.keys.get("switching")))
        elif not switching and self.paused_for is not None:
            self.paused_for = None
            buffer.resume()

    def _drain_for(self, switching):
        """Another member's switchover (switching: its key's value): this member's transactions on
        the old primary end (as the switching member's own do: switchover.drain), then it says so
        (drained/NAME), so that the old primary's WAL head is read after them."""
        try:
            old = self.proxy.tracker.node(json.loads(switching).get("from"))
            if old is not None:
                drain(self.proxy, old, self.config.failover.switchover_timeout)
            if self.keys.get("switching") == switching:
                self.etcd.put(self.prefix + f"drained/{self.me}", switching, self.lease)
        except (OSError, ValueError, AttributeError) as e:
            log.warning("fleet: draining for another member's switchover failed (%s): it waits "
                        "switchover_timeout for this member", e)

    def wait_drained(self, deadline):
        """The switching member, once it drained its own: until every other live member drained
        its transactions on the old primary for this switchover, or deadline (a member that does
        not answer: its transactions may still be running; fence_command is what stops them)."""
        switching = self.keys.get("switching")
        while True:
            others = [k[len("members/"):] for k in list(self.keys) if k.startswith("members/")]
            waiting = [name for name in others if name != self.me and self.keys.get(f"drained/{name}") != switching]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                log.warning("fleet: switchover goes on without word from %s that its transactions on the "
                            "old primary ended", ", ".join(sorted(waiting)))
                return
            gevent.sleep(0.02)

    def _disabled(self):
        """Nodes disabled through any member are fenced on every member, enabled again when the key goes."""
        tracker, disabled = self.proxy.tracker, {}
        for key, why in self.keys.items():
            if key.startswith("disabled/"):
                disabled[key[len("disabled/"):]] = FLEET_FENCE + why
        for name, why in disabled.items():
            node = tracker.node(name)
            if node is not None and tracker.fenced.get(name) != why:
                tracker.fence(name, why)
                self.proxy.pools.close_idle(node)
        for name, why in list(tracker.fenced.items()):
            if why.startswith(FLEET_FENCE) and name not in disabled:
                tracker.enable(name)

    def _tenants(self):
        """Tenants changed through any member: every member applies them (tenancy/)."""
        tenants = self.proxy.tenants
        if tenants is None:
            return
        seen = {k: v for k, v in self.keys.items() if k.startswith("tenants/")}
        if seen != self.tenants_seen:
            self.tenants_seen = seen
            tenants.configure(self.proxy.config)

    def disable(self, name, reason):
        """The operator disables node name at this member: the whole fleet takes it out of traffic."""
        self.etcd.put(self.prefix + f"disabled/{name}", f"{reason} (at {self.me})")
        self.keys[f"disabled/{name}"] = f"{reason} (at {self.me})"
        self._disabled()

    def enable(self, name):
        self.etcd.delete(self.prefix + f"disabled/{name}")
        self.keys.pop(f"disabled/{name}", None)
        self._disabled()
        self.proxy.tracker.enable(name)

    def follow(self, decision, starting=False):
        tracker = self.proxy.tracker
        new, old, epoch = decision.get("primary"), decision.get("old"), decision["epoch"]
        self.epoch = epoch
        self.decisions = (self.decisions + [decision])[-10:]
        if tracker.node(new) is None:
            log.error("fleet: decision %d names %r, none of the configured nodes", epoch, new)
            return
        if starting:  # history: followed only if the node still answers as the primary
            seen = tracker.seen.get(new)
            if seen is None:
                self.proxy.health.probe(tracker.node(new))
                seen = tracker.seen.get(new)
            if seen is None or seen.in_recovery:
                log.info("fleet: decision %d (%s primary) is history: %s does not answer as primary", epoch,
                         new, new)
                return
        if old and old != new and old not in tracker.fenced:
            tracker.fence(old, f"fleet decision {epoch}: {new} promoted by {decision.get('by')}")
            self.cut(old)
        if tracker.primary != new or tracker.state != CONFIRMED:
            tracker.take_over(new, f"fleet decision {epoch} by {decision.get('by')}")

    # --- deciding --------------------------------------------------------------------------------
    def failover(self, old, run):
        """One failover attempt in the fleet: True once a primary is confirmed (promoted here, or
        decided by another member). run() is the controller's own attempt (failover.py)."""
        if self.lease is None or self.error is not None:
            return self._refuse(f"etcd unreachable ({self.error}): no member promotes without it")
        try:
            self.etcd.put(self.prefix + f"views/{self.me}", json.dumps(self.view()), self.lease)
            got, holder = self.etcd.create(self.prefix + "lock", self.me, self.lease)
        except OSError as e:
            return self._refuse(f"etcd unreachable ({e}): no member promotes without it")
        if not got:
            return self._refuse(f"{holder} holds the failover lock")
        try:
            return self._decide(old, run)
        except OSError as e:  # (etcd lost while deciding: nothing promoted unless run() did)
            return self._refuse(f"etcd unreachable ({e}) while deciding")
        finally:
            try:
                self.etcd.delete_if(self.prefix + "lock", self.me)
            except OSError:
                pass  # (the lock goes with the lease)

    def _decide(self, old, run):
        """Holding the lock: follow a newer decision, or promote if most live members see old down."""
        keys, _ = self.etcd.range(self.prefix, prefix=True)  # (fresh: not the watch's view)
        self.keys.update({k[len(self.prefix):]: v for k, v in keys.items()})
        decision = self.mirror.json("decision")
        if decision and decision.get("epoch", 0) > self.epoch:
            self.follow(decision)
        if self.proxy.tracker.current() is not None:  # (decided meanwhile, by another member: followed)
            return True
        live = [k[len("members/"):] for k in (k[len(self.prefix):] for k in keys) if k.startswith("members/")]
        views = {name: json.loads(keys.get(self.prefix + f"views/{name}") or "{}") for name in live}
        down = [name for name in live if old in views[name].get("down", ())]
        if 2 * len(down) <= len(live):
            return self._refuse(f"only {len(down)} of {len(live)} live members see {old} down; "
                                "promoting nothing")
        log.warning("fleet: %d of %d live members see %s down; %s decides", len(down), len(live), old, self.me)
        self.refusal = None
        if old:
            self.fence(old)
        if not run():
            return False
        new = self.proxy.tracker.current()
        if new is not None and new.name != old:
            self.decide(new.name, old, "failover")
        return new is not None

    def _refuse(self, why):
        if why != self.refusal:
            log.warning("fleet: failover not decided here: %s", why)
        self.refusal = why
        return False

    def fence(self, name):
        """The old primary gets nothing more: fenced here, `failover.fence_command`, and, if it still
        answers, made read-only with its sessions ended."""
        proxy, cfg = self.proxy, self.config.failover
        node = proxy.tracker.node(name)
        proxy.tracker.fence(name, f"fleet failover by {self.me}")
        if node is None:
            return
        self.cut(name)
        try:
            if cfg.fence_command:
                proxy.ops.command(cfg.fence_command, node=node.name, host=node.host, port=node.port)
            proxy.ops.run_sql(node, "alter system set default_transaction_read_only = on", timeout=1)
            proxy.ops.run_sql(node, "select pg_reload_conf(), count(pg_terminate_backend(pid)) from pg_stat_activity "
                                    "where backend_type = 'client backend' and pid <> pg_backend_pid()", timeout=1)
            log.warning("fleet: %s still answered: made read-only, its sessions ended", name)
        except NodeOperationFailed as e:
            log.info("fleet: %s not reached to fence it (%s)", name, e.message)

    def cut(self, name):
        """Server connections on the fenced old primary are cut, not waited for (a primary gone
        behind a network that still holds its connections answers nothing): what ran there is
        replayed on the new primary when its journal allows (replay.py), else the client gets the
        connection error; idle ones are closed."""
        node, cut = self.proxy.tracker.node(name), 0
        for session in list(self.proxy.sessions):
            server = session.server
            if server is not None and server.node.name == name:
                try:
                    server.sock.shutdown(socket.SHUT_RDWR)
                    cut += 1
                except OSError:
                    pass
        if node is not None:
            self.proxy.pools.close_idle(node)
        if cut:
            log.warning("fleet: cut %d server connection(s) in use on %s", cut, name)

    def decide(self, new, old, kind):
        """Write the decision every member follows (the next epoch)."""
        epoch = max(self.epoch, (self.mirror.json("decision") or {}).get("epoch", 0)) + 1
        seen = self.proxy.tracker.seen.get(new)
        decision = {"epoch": epoch, "primary": new, "old": old, "kind": kind, "by": self.me, "at": time.time(),
                    "timeline": seen.timeline if seen is not None else None}
        self.etcd.put(self.prefix + "decision", json.dumps(decision))
        self.epoch = epoch
        self.decisions = (self.decisions + [decision])[-10:]
        log.warning("fleet: decision %d: %s primary (%s, was %s)", epoch, new, kind, old)

    # --- a planned switchover moves the whole fleet ------------------------------------------------
    def switchover(self, old, new, run):
        """run() the switchover holding the lock, the other members holding new transactions; the
        decision moves them all."""
        if self.lease is None:
            raise NodeOperationFailed(f"etcd unreachable ({self.error}): the fleet cannot switch over")
        got, holder = self.etcd.create(self.prefix + "lock", self.me, self.lease)
        if not got:
            raise NodeOperationFailed(f"{holder} holds the fleet's failover lock")
        try:
            switching = json.dumps({"from": old, "to": new, "by": self.me, "at": time.time()})
            self.etcd.put(self.prefix + "switching", switching, self.lease)
            self.keys["switching"] = switching  # (wait_drained compares the others' drained/ with it)
            result = run()
            self.decide(new, old, "switchover")
            return result
        finally:
            try:
                self.etcd.delete(self.prefix + "switching")
                self.etcd.delete_if(self.prefix + "lock", self.me)
            except OSError:
                pass

    def api_keys(self):
        """{id: entry} of the fleet's API keys (apikeys/ID), as watched."""
        if self._api_keys[0] != self.revision:
            self._api_keys = (self.revision, api_keys.entries(self.keys, "apikeys/"))
        return self._api_keys[1]

    # --- cancel requests -------------------------------------------------------------------------
    def address_of(self, peer_id):
        """host:port of the member whose cancel keys carry peer_id, or None."""
        name = self.keys.get(f"ids/{peer_id}")
        for key in self.keys:
            if name and key.startswith("members/"):
                record = self.mirror.json(key) or {}
                if record.get("proxy") == name:
                    return record.get("address")
        return None

    def overview(self):
        members = []
        for key in sorted(self.keys):
            if key.startswith("members/"):
                record = self.mirror.json(key) or {}
                record["view"] = self.mirror.json(f"views/{record.get('name')}")
                members.append(record)
        return {"cluster": self.config.fleet.cluster, "me": self.me, "peer_id": self.peer_id, "dcs": "etcd",
                "members": members, "lock": self.keys.get("lock"), "switching": self.mirror.json("switching"),
                "decision": self.mirror.json("decision"), "decisions": self.decisions,
                "agree_on_primary": agree_on_primary(m.get("view") for m in members), "refusal": self.refusal, "error": self.error,
                "read": self.read.is_set()}


class TenantChanges:
    """Runtime changes to the tenants kept in etcd for the whole fleet: tenants/NAME = the table, or
    null for a tenant removed (tenancy/: Tenants.changes)."""

    def __init__(self, fleet):
        self.fleet = fleet

    def load(self):
        out = {}
        for key, value in self.fleet.keys.items():
            if key.startswith("tenants/"):
                try:
                    out[key[len("tenants/"):]] = json.loads(value)
                except ValueError:
                    continue
        return out

    def save(self, name, table):
        fleet = self.fleet
        fleet.etcd.put(fleet.prefix + f"tenants/{name}", json.dumps(table, sort_keys=True))
        fleet.keys[f"tenants/{name}"] = json.dumps(table, sort_keys=True)
