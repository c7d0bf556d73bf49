"""The transaction latency histogram (stats.py): each lease's duration in the first bucket whose
bound it does not exceed, as Prometheus' `le` buckets count."""
from helios_proxy.stats import BUCKETS, Stats


def test_each_duration_counts_in_the_first_bucket_whose_bound_it_does_not_exceed():
    stats = Stats()
    stats.took = [0.0001, 0.0005, 0.0006, 0.004, 0.005, 0.0051, 9.99, 10.0, 11.0, 300.0, 0.0]
    assert stats.histogram == [3, 1, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2]
    assert abs(stats.latency_sum - sum([0.0001, 0.0005, 0.0006, 0.004, 0.005, 0.0051, 9.99, 10.0, 11.0, 300.0])) < 1e-9
    assert len(stats.histogram) == len(BUCKETS) + 1


def test_durations_appended_later_add_to_the_counts():
    stats = Stats()
    stats.took = [0.02, 0.0003]
    stats.add_up()
    stats.took.extend([0.02, 0.02, 7.0])
    stats.add_up()
    stats.add_up()  # (nothing new)
    counts = stats.histogram
    assert counts[BUCKETS.index(0.025)] == 3 and counts[0] == 1 and counts[BUCKETS.index(10.0)] == 1
    assert sum(counts) == 5


def test_the_leases_begun_are_counted_per_node_as_reads_and_writes():
    """Router.counts(): the node names each lease appended, added up per node (a node's first
    leases too), and nothing counted twice."""
    from collections import defaultdict
    from types import SimpleNamespace

    from helios_proxy.routing.router import Router, new_counts
    router = SimpleNamespace(stats=defaultdict(new_counts), leased={"primary": [], "standby": []})
    router.leased["primary"].extend(["primary"] * 5)
    router.leased["standby"].extend(["standby1", "standby2", "standby1"])
    counts = Router.counts(router)
    assert counts == {"primary": {"reads": 0, "writes": 5, "errors": 0},
                      "standby1": {"reads": 2, "writes": 0, "errors": 0},
                      "standby2": {"reads": 1, "writes": 0, "errors": 0}}
    router.leased["primary"].extend(["primary", "primary", "standby1"])  # (standby1, promoted)
    router.leased["standby"].extend(["standby2", "standby3"])  # standby3: its first
    counts = Router.counts(router)
    assert counts["primary"]["writes"] == 7 and counts["standby1"] == {"reads": 2, "writes": 1, "errors": 0}
    assert counts["standby2"]["reads"] == 2 and counts["standby3"]["reads"] == 1
    assert Router.counts(router) == counts and router.leased == {"primary": [], "standby": []}
