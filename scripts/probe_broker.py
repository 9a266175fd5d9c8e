"""Probes a Kafka-compatible broker for two group features a cluster design may rely on: the
cooperative-sticky assignor (incremental rebalancing, KIP-429) and static membership
(`group.instance.id`, KIP-345). A developer's tool, not part of the tests:

    pip install confluent-kafka
    python3 scripts/probe_broker.py 127.0.0.1:9092

tansu 0.6 (2026-12-05): cooperative-sticky works (a joining member takes half the partitions,
the other keeps its half without a full revoke); static membership does not (two static
members are assigned, then revoked, and never assigned again)."""
import sys, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
topic = "probe-%d" % int(time.time())
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
    f.result()
time.sleep(1)

def consumer(name, strategy, instance=None, events=None):
    conf = {"bootstrap.servers": bootstrap, "group.id": "probe-" + strategy + topic,
            "client.id": name, "partition.assignment.strategy": strategy,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
            "auto.offset.reset": "earliest"}
    if instance:
        conf["group.instance.id"] = instance
    c = Consumer(conf)
    def on_assign(c, parts):
        events.append((name, "assign", sorted(p.partition for p in parts)))
        if strategy == "cooperative-sticky":
            c.incremental_assign(parts)
    def on_revoke(c, parts):
        events.append((name, "revoke", sorted(p.partition for p in parts)))
        if strategy == "cooperative-sticky":
            c.incremental_unassign(parts)
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    return c

def run(cs, seconds):
    end = time.time() + seconds
    while time.time() < end:
        for c in cs:
            c.poll(0.05)

def assignment(c):
    return sorted(p.partition for p in c.assignment())

# Cooperative-sticky: A alone, then B joins; A must keep a subset without a full revoke.
ev = []
a = consumer("A", "cooperative-sticky", events=ev)
run([a], 8)
before = assignment(a)
b = consumer("B", "cooperative-sticky", events=ev)
run([a, b], 15)
print("cooperative: A alone", before, "then A", assignment(a), "B", assignment(b))
kept = set(assignment(a)) <= set(before) and assignment(a) and assignment(b)
full_revoke = ("A", "revoke", before) in ev
print("cooperative-sticky:", "works" if kept and not full_revoke else "does NOT work")
print("cooperative events:", ev)
a.close(); b.close()

# Static membership: C and D with instance ids; D closes without leaving (close sends
# LeaveGroup unless static), restarts within the session: no reassignment expected.
ev = []
c = consumer("C", "range", "inst-c", ev)
d = consumer("D", "range", "inst-d", ev)
run([c, d], 25)
print("static: C", assignment(c), "D", assignment(d))
d.close()
d2 = consumer("D2", "range", "inst-d", ev)
run([c, d2], 10)
print("static: after D restarted as D2 with the same instance id: C", assignment(c), "D2", assignment(d2))
print("static events:", ev)
print("static membership:", "works" if assignment(c) and assignment(d2) else "does NOT work")
c.close(); d2.close()
