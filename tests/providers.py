"""A third-party topology provider for the tests (topology.provider = "tests.providers:FilePrimary"): the
primary is the node named in the file HELIOS_TEST_PRIMARY_FILE names, read every 0.1 s."""
import os

import gevent

from helios_proxy.topology.providers import TopologyProvider


class FilePrimary(TopologyProvider):
    def start(self):
        self.greenlet = gevent.spawn(self.follow)

    def stop(self):
        self.greenlet.kill(block=False)

    def follow(self):
        while True:
            try:
                with open(os.environ["HELIOS_TEST_PRIMARY_FILE"]) as f:
                    name = f.read().strip()
            except OSError:
                name = ""
            if name and self.get_node(name) is not None and (self.tracker.primary != name
                                                              or self.get_primary() is None):
                self.tracker.take_over(name, "the file says so")
            gevent.sleep(0.1)
