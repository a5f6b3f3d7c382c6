"""Reproduce the Kafka security checks for carebus issue 14 item 1 on a throwaway broker.

Run with carebus's venv plus `cryptography` (not in the venv; installed with
`pip install --target /tmp/kafka-security/pylib cryptography`):

    PYTHONPATH=/tmp/kafka-security/pylib:/tmp/kafka-security \
        /work/main/.venv/bin/python /tmp/kafka-security/try.py [--keep] [--bench N]

It generates a local CA + broker cert (PEM), formats KRaft storage with SCRAM users `broker`
and `admin`, starts a SASL_SSL + StandardAuthorizer broker on 127.0.0.1:39092 (controller
39093, mTLS), adds service users and ACLs with confluent-kafka's AdminClient, and checks who
can do what. Nothing outside /tmp/kafka-security/run is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from broker import Broker, port_open
from pki import make_pki

HERE = Path(__file__).resolve().parent
RUN = HERE / "run"
PKI = RUN / "pki"
BROKER_PORT, CONTROLLER_PORT = 39092, 39093
BOOTSTRAP = f"127.0.0.1:{BROKER_PORT}"
CA = str(PKI / "ca.pem")

# Bootstrapped with `kafka-storage format --add-scram` (must exist before the broker starts).
BOOTSTRAP_USERS = {"broker": "broker-secret", "admin": "admin-secret"}
# Added at run time by the admin through AlterUserScramCredentials.
SERVICE_USERS = {
    "gateway": "gw-secret",
    "registry": "reg-secret",
    "router": "router-secret",
    "sla": "sla-secret",
    "webhooks": "wh-secret",
    "sinks": "sinks-secret",
}

TOPICS = [
    "care.events.v1", "care.deliveries.dps.v1", "care.audit.v1", "care.alerts.v1",
    "care.deadletter.v1",
]

# The ACLs as data (what an infra/kafka/acls.yaml would say), for the principals tested here.
ACLS: dict[str, dict[str, list[str]]] = {
    "gateway": {"write": ["care.events.v1"]},
    "registry": {"write": ["care.events.v1"]},
    "router": {
        "read": ["care.events.v1"],
        "write": ["care.deliveries.dps.v1", "care.audit.v1", "care.deadletter.v1"],
        "groups": ["carebus-router"],
        # faust's own topics: carebus-router-__assignor-__leader, carebus-router-<table>-changelog
        "internal_prefix": ["carebus-router-"],
    },
    "sla": {"read": ["care.events.v1"], "write": ["care.alerts.v1", "care.deadletter.v1"],
            "groups": ["carebus-sla"], "internal_prefix": ["carebus-sla-"]},
    "webhooks": {"read": ["care.deliveries.dps.v1"], "write": ["care.deadletter.v1"],
                 "groups": ["carebus-webhooks"]},
    "sinks": {"read": ["care.events.v1"], "write": ["care.deadletter.v1"],
              "groups": ["carebus-event-store"]},
}


def bindings(acls: dict[str, dict[str, list[str]]]) -> list[AclBinding]:
    def b(rtype, name, pattern, principal, op):
        return AclBinding(rtype, name, pattern, f"User:{principal}", "*", op, AclPermissionType.ALLOW)

    out: list[AclBinding] = []
    T, G, LIT, PRE = ResourceType.TOPIC, ResourceType.GROUP, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    for principal, spec in acls.items():
        # READ implies DESCRIBE; WRITE implies DESCRIBE and (KIP-679, Kafka >= 2.8) IDEMPOTENT_WRITE.
        out += [b(T, t, LIT, principal, AclOperation.READ) for t in spec.get("read", [])]
        out += [b(T, t, LIT, principal, AclOperation.WRITE) for t in spec.get("write", [])]
        out += [b(G, g, LIT, principal, AclOperation.READ) for g in spec.get("groups", [])]
        for prefix in spec.get("internal_prefix", []):
            out += [b(T, prefix, PRE, principal, op) for op in
                    (AclOperation.CREATE, AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)]
    return out


def conf(user: str | None, password: str | None = None, **extra) -> dict:
    c = {"bootstrap.servers": BOOTSTRAP}
    if user is not None:
        c |= {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password if password is not None else
            (BOOTSTRAP_USERS | SERVICE_USERS)[user],
            "ssl.ca.location": CA,
        }
    return c | extra


def quiet() -> logging.Logger:
    log = logging.getLogger("quiet")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def connect_error(c: dict, timeout: float = 6.0) -> str | None:
    """None if a metadata request succeeds, else librdkafka's first log line about it."""
    log = logging.getLogger(f"probe-{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    collect = _Collect()
    log.addHandler(collect)
    admin = AdminClient(c, logger=log)
    try:
        admin.list_topics(timeout=timeout)
        return None
    except KafkaException as exc:
        admin.poll(0)
        first = next((l for l in collect.lines if "FAIL" in l or "ERROR" in l or "rror" in l), "")
        return f"{exc.args[0].name()}; librdkafka: {first[:260]}"


def produce(user: str, topic: str, value: bytes = b"x" * 200) -> str:
    """'OK' or the delivery error's name for one idempotent, acks=all record."""
    result: list[str] = []
    p = Producer(conf(user, **{"enable.idempotence": True, "acks": "all",
                               "message.timeout.ms": 8000}), logger=quiet())
    try:
        p.produce(topic, key=b"person-1", value=value,
                  on_delivery=lambda err, msg: result.append("OK" if err is None else err.name()))
    except KafkaException as exc:
        return f"produce() raised {exc.args[0].name()}"
    p.flush(10)
    return result[0] if result else "no delivery report"


def consume(user: str, topic: str, group: str, timeout: float = 10.0) -> str:
    """'OK n' for records read, or the first consumer error's name."""
    c = Consumer(conf(user, **{"group.id": group, "auto.offset.reset": "earliest",
                               "enable.auto.commit": False, "isolation.level": "read_committed"}),
                 logger=quiet())
    c.subscribe([topic])
    got, deadline = 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                return m.error().name()
            got += 1
            c.commit(m, asynchronous=False)
            if got >= 1:
                return f"OK {got} (committed offset {m.offset() + 1})"
        return f"OK {got} (timeout)"
    finally:
        c.close()


def tls_handshake(port: int, *, client_cert: bool) -> str:
    ctx = ssl.create_default_context(cafile=CA)
    if client_cert:
        ctx.load_cert_chain(PKI / "broker.pem")
    try:
        with socket.create_connection(("127.0.0.1", port), 3) as s, \
                ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            # TLS 1.3: the server checks the client certificate after the handshake; read to see.
            t.settimeout(2)
            t.sendall(b"\x00\x00\x00\x00")
            try:
                t.recv(1)
            except TimeoutError:
                pass
            return f"handshake OK ({t.version()})"
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def aiokafka_roundtrip() -> str:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.helpers import create_ssl_context

    ctx = create_ssl_context(cafile=CA)
    auth = dict(bootstrap_servers=BOOTSTRAP, security_protocol="SASL_SSL",
                sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="router",
                sasl_plain_password=SERVICE_USERS["router"], ssl_context=ctx)
    prod = AIOKafkaProducer(**auth, enable_idempotence=True, acks="all")
    await prod.start()
    try:
        md = await prod.send_and_wait("care.audit.v1", b"aiokafka", key=b"person-1")
    finally:
        await prod.stop()
    cons = AIOKafkaConsumer("care.events.v1", **auth, group_id="carebus-router",
                            auto_offset_reset="earliest", enable_auto_commit=False)
    await cons.start()
    try:
        batch = await cons.getmany(timeout_ms=8000)
        n = sum(len(v) for v in batch.values())
    finally:
        await cons.stop()
    return f"produced care.audit.v1@{md.partition}/{md.offset}, read {n} from care.events.v1"


FAUST_APP = textwrap.dedent('''
    import asyncio, os, ssl, sys
    import faust
    ctx = ssl.create_default_context(cafile=os.environ["CA"])
    app = faust.App(
        "carebus-router", broker="kafka://" + os.environ["BOOTSTRAP"],
        broker_credentials=faust.SASLCredentials(
            username=os.environ["USER_"], password=os.environ["PASS_"],
            mechanism="SCRAM-SHA-512", ssl_context=ctx),
        store="memory://", key_serializer="raw", value_serializer="raw",
        datadir=os.environ["DATADIR"], topic_partitions=1, topic_replication_factor=1,
        processing_guarantee="at_least_once", consumer_auto_offset_reset="earliest",
        producer_acks=-1, web_enabled=False,
    )
    events = app.topic("care.events.v1", key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    state = app.Table("person-state", default=int, partitions=1)
    @app.agent(events)
    async def route(stream):
        async for key, value in stream.items():
            state[key] += 1
            print("FAUST-PROCESSED", key, state[key], flush=True)
    @app.timer(1.0)
    async def stop_when_done():
        if any(v for v in state.values()):
            await asyncio.sleep(2)   # let the changelog be written and offsets committed
            print("FAUST-DONE", flush=True)
            os._exit(0)
    app.main()
''')


def faust_run(user: str) -> tuple[int, str]:
    (RUN / "faust_app.py").write_text(FAUST_APP)
    env = {"CA": CA, "BOOTSTRAP": BOOTSTRAP, "USER_": user, "PASS_": SERVICE_USERS[user],
           "DATADIR": str(RUN / f"faust-{user}"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(HERE)}
    try:
        r = subprocess.run([sys.executable, str(RUN / "faust_app.py"), "worker", "-l", "info"],
                           env=env, capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()
        return -1, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", action="store_true", help="leave the broker running")
    ap.add_argument("--bench", type=int, default=0, help="records for a PLAINTEXT vs SASL_SSL run")
    args = ap.parse_args()

    shutil.rmtree(RUN, ignore_errors=True)
    t0 = time.monotonic()
    make_pki(PKI)
    print(f"PKI generated in {time.monotonic() - t0:.2f}s: {sorted(p.name for p in PKI.iterdir())}")

    broker = Broker(RUN / "secure", HERE / "server-secure.properties", broker_port=BROKER_PORT,
                    controller_port=CONTROLLER_PORT, pki_dir=str(PKI),
                    broker_password=BOOTSTRAP_USERS["broker"])
    broker.write_config()
    fmt = broker.format(list(BOOTSTRAP_USERS.items()))
    print("format:", fmt.stdout.strip().splitlines()[-1])
    took = broker.start(lambda: connect_error(conf("admin"), 3) is None)
    print(f"broker answered an authenticated metadata request after {took:.1f}s")

    try:
        admin = AdminClient(conf("admin"), logger=quiet())

        # --- SCRAM users at run time (AlterUserScramCredentials, KIP-554) ---
        ups = [UserScramCredentialUpsertion(u, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), p.encode())
               for u, p in SERVICE_USERS.items()]
        for u, f in admin.alter_user_scram_credentials(ups).items():
            f.result()
        described = admin.describe_user_scram_credentials().result()
        check("SCRAM users via AdminClient", set(SERVICE_USERS) | set(BOOTSTRAP_USERS) <= set(described),
              ", ".join(f"{u}:{[ (i.mechanism.name, i.iterations) for i in d.scram_credential_infos]}"
                        for u, d in sorted(described.items())))

        # --- topics (the admin is a super user) ---
        for t, f in admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS]).items():
            f.result()

        # --- ACLs, applied twice: CreateAcls of an existing binding is a no-op ---
        wanted = bindings(ACLS)
        everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                      AclOperation.ANY, AclPermissionType.ANY)
        counts = []
        for _ in range(2):
            for b, f in admin.create_acls(wanted).items():
                f.result()
            # CreateAcls goes to the controller; the broker's authorizer sees it once it has
            # replayed the metadata record (milliseconds), DescribeAcls reads the broker's copy.
            time.sleep(1)
            counts.append(len(admin.describe_acls(everything).result()))
        check("ACLs applied twice are idempotent", counts == [len(wanted)] * 2,
              f"{len(wanted)} bindings wanted; on the broker after 1st/2nd apply: {counts}")

        # --- authentication ---
        e = connect_error({"bootstrap.servers": BOOTSTRAP})
        check("unauthenticated PLAINTEXT client cannot connect", e is not None, str(e))
        e = connect_error({"bootstrap.servers": BOOTSTRAP, "security.protocol": "SSL", "ssl.ca.location": CA})
        check("TLS-only client (no SASL) cannot connect", e is not None, str(e))
        e = connect_error(conf("gateway", "wrong-password"))
        check("wrong SCRAM password is refused", e is not None, str(e))
        e = connect_error({k: v for k, v in conf("gateway").items() if k != "ssl.ca.location"}, 5)
        check("client without the local CA cannot connect", e is not None, str(e))
        check("controller listener: TLS without client certificate refused",
              "OK" not in tls_handshake(CONTROLLER_PORT, client_cert=False),
              tls_handshake(CONTROLLER_PORT, client_cert=False))
        e = connect_error({"bootstrap.servers": f"127.0.0.1:{CONTROLLER_PORT}"}, 4)
        check("controller listener: PLAINTEXT client cannot talk", e is not None, str(e))

        # --- authorization ---
        r = produce("gateway", "care.events.v1")
        check("gateway writes care.events.v1 (idempotent, no cluster ACL)", r == "OK", r)
        r = produce("gateway", "care.deliveries.dps.v1")
        check("gateway cannot write care.deliveries.dps.v1", r == "TOPIC_AUTHORIZATION_FAILED", r)
        r = produce("sinks", "care.events.v1", b'{"type":"no.carebus.v1.ConsentChange","forged":true}')
        check("forged consent change from the sinks principal refused", r == "TOPIC_AUTHORIZATION_FAILED", r)
        r = produce("router", "care.deliveries.dps.v1")
        check("router writes care.deliveries.dps.v1", r == "OK", r)
        r = consume("webhooks", "care.events.v1", "carebus-webhooks")
        check("webhooks cannot read care.events.v1", r == "TOPIC_AUTHORIZATION_FAILED", r)
        r = consume("webhooks", "care.deliveries.dps.v1", "carebus-webhooks")
        check("webhooks reads care.deliveries.dps.v1 in its group", r.startswith("OK 1"), r)
        r = consume("webhooks", "care.deliveries.dps.v1", "someone-elses-group")
        check("webhooks cannot use another group", r == "GROUP_AUTHORIZATION_FAILED", r)
        r = consume("sinks", "care.events.v1", "carebus-event-store")
        check("event-store sink reads care.events.v1", r.startswith("OK 1"), r)
        e = None
        gw_admin = AdminClient(conf("gateway"), logger=quiet())
        try:
            gw_admin.create_topics([NewTopic("care.evil.v1", 1, 1)])["care.evil.v1"].result()
        except KafkaException as exc:
            e = exc.args[0].name()
        check("a service cannot create topics", e == "TOPIC_AUTHORIZATION_FAILED", str(e))
        e = None
        sinks_admin = AdminClient(conf("sinks"), logger=quiet())
        try:
            for f in sinks_admin.create_acls(
                    [AclBinding(ResourceType.TOPIC, "care.events.v1", ResourcePatternType.LITERAL,
                                "User:sinks", "*", AclOperation.WRITE, AclPermissionType.ALLOW)]).values():
                f.result()
        except KafkaException as exc:
            e = exc.args[0].name()
        check("a service cannot grant itself ACLs", e == "CLUSTER_AUTHORIZATION_FAILED", str(e))

        # --- aiokafka / faust with SCRAM-SHA-512 over TLS ---
        try:
            r = asyncio.run(aiokafka_roundtrip())
            check("aiokafka SASL_SSL SCRAM-SHA-512 produce+consume", True, r)
        except Exception as exc:  # noqa: BLE001
            check("aiokafka SASL_SSL SCRAM-SHA-512 produce+consume", False, repr(exc))
        rc, out = faust_run("router")
        internal = sorted(admin.list_topics(timeout=5).topics)
        check("faust app (table + agent) under router principal with prefixed ACLs",
              "FAUST-DONE" in out, f"rc={rc}; topics now: {internal}")
        (RUN / "faust-router.log").write_text(out)

        denials = [l for l in broker.log.read_text().splitlines() if "Principal = User:" in l and "DENIED" in l.upper()]
        print(f"\nbroker authorizer log: {len(denials)} denials, e.g.")
        seen = set()
        for line in denials:
            key = line.split("Principal = ")[1].split(" is ")[0] + line.split("on resource = ")[-1][:60]
            if key not in seen:
                seen.add(key)
                print("   ", line[line.find("Principal"):][:230])
    finally:
        if not args.keep:
            broker.stop()

    if args.bench:
        bench(args.bench)

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def bench_produce(c: dict, topic: str, n: int, size: int = 200) -> float:
    p = Producer(c | {"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                      "compression.type": "lz4", "partitioner": "murmur2_random",
                      "queue.buffering.max.messages": 1_000_000}, logger=quiet())
    import os
    payload = os.urandom(size // 2).hex().encode()  # 200 B, not very compressible
    errors = [0]

    def dr(err, msg):
        if err is not None:
            errors[0] += 1

    t = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, key=f"person-{i % 10000}".encode(), value=payload, on_delivery=dr)
                break
            except BufferError:
                p.poll(0.05)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    el = time.perf_counter() - t
    assert errors[0] == 0, errors
    return el


def bench_latency(c: dict, topic: str, rounds: int = 300) -> dict:
    """Connect time (first metadata) and one-record produce+flush round trips (acks=all)."""
    connects = []
    for _ in range(10):
        t = time.perf_counter()
        a = AdminClient(c, logger=quiet())
        a.list_topics(timeout=10)
        connects.append(time.perf_counter() - t)
        del a
    p = Producer(c | {"enable.idempotence": True, "acks": "all", "linger.ms": 0}, logger=quiet())
    p.produce(topic, b"warm")
    p.flush(10)
    rtts = []
    for i in range(rounds):
        t = time.perf_counter()
        p.produce(topic, key=b"k", value=b"v" * 200)
        p.flush(10)
        rtts.append(time.perf_counter() - t)
    rtts.sort()
    connects.sort()
    return {"connect_ms_median": round(1000 * connects[len(connects) // 2], 1),
            "produce_flush_ms_p50": round(1000 * rtts[len(rtts) // 2], 2),
            "produce_flush_ms_p99": round(1000 * rtts[int(len(rtts) * 0.99)], 2)}


def bench(n: int) -> None:
    """Same box, same jars: a PLAINTEXT broker (as infra/kafka/server.properties) vs SASL_SSL."""
    plain = Broker(RUN / "plain", Path("/work/main/infra/kafka/server.properties"),
                   broker_port=39192, controller_port=39193)
    plain.write_config()
    plain.format()
    plain.start(lambda: connect_error({"bootstrap.servers": "127.0.0.1:39192"}, 3) is None)
    secure = Broker(RUN / "secure", HERE / "server-secure.properties", broker_port=BROKER_PORT,
                    controller_port=CONTROLLER_PORT, pki_dir=str(PKI),
                    broker_password=BOOTSTRAP_USERS["broker"])
    results, latency = {}, {}
    try:
        pc = {"bootstrap.servers": "127.0.0.1:39192"}
        plain_admin = AdminClient(pc)
        plain_admin.create_topics([NewTopic("bench", 4, 1)])["bench"].result()
        bench_produce(pc, "bench", 20000)  # warm up
        results["PLAINTEXT"] = [bench_produce(pc, "bench", n) for _ in range(3)]
        latency["PLAINTEXT"] = bench_latency(pc, "bench")
    finally:
        plain.stop()
    secure.start(lambda: connect_error(conf("admin"), 3) is None)  # same data dir, users kept
    try:
        admin = AdminClient(conf("admin"), logger=quiet())
        admin.create_topics([NewTopic("bench", 4, 1)])["bench"].result()
        for f in admin.create_acls([AclBinding(ResourceType.TOPIC, "bench", ResourcePatternType.LITERAL,
                                               "User:gateway", "*", AclOperation.WRITE,
                                               AclPermissionType.ALLOW)]).values():
            f.result()
        time.sleep(1)
        sc = conf("gateway")
        bench_produce(sc, "bench", 20000)
        results["SASL_SSL"] = [bench_produce(sc, "bench", n) for _ in range(3)]
        latency["SASL_SSL"] = bench_latency(sc, "bench")
    finally:
        secure.stop()
    for k, v in results.items():
        best = min(v)
        print(f"bench {k}: {n} x 200 B idempotent acks=all lz4: runs {[f'{x:.2f}s' for x in v]}, "
              f"best {n / best:,.0f} rec/s ({n * 200 / best / 1e6:.1f} MB/s); {latency.get(k)}")


if __name__ == "__main__":
    sys.exit(main())
