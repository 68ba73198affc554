"""SASL, TLS and permissions on the Kafka face: the users of ``tidings users`` log in with
PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 from every client, over plain TCP and TLS; a wrong
password, a skipped login and a user of another vhost are refused; a user's permissions
decide what it may produce, fetch, see, create and commit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v5.request import MetadataRequest
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from tidings.auth import UserStore
from tidings.record_batch import encode_batch

from ..serverproc import ServerProcess
from .conftest import client_library, kafkajs, kcat
from .groups_wire import join_body
from .raw import RawKafka
from .secure import secure_kafka_face
from .test_groups_protocol import _commit
from .test_protocol import _create, _produce

ALICE, ALICE_PW = "alice", "alice-secret"


def _users(users: UserStore) -> None:
    users.add_user(ALICE, ALICE_PW)
    users.set_permissions(ALICE, "/", r"alice\..*", r"alice\..*", r"alice\..*")
    users.add_vhost("elsewhere")
    users.add_user("stranger", "stranger-secret")
    users.set_permissions("stranger", "elsewhere", ".*", ".*", ".*")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    with secure_kafka_face(Path(tmp_path_factory.mktemp("kafka-secure")), _users) as found:
        yield found


def _login(raw: RawKafka, user: str, password: str, mechanism: str = "PLAIN") -> ErrorCode:
    shake = raw.request(17, 1, SaslHandshakeRequest(mechanism=mechanism))
    assert shake.error_code == ErrorCode.none
    assert set(shake.mechanisms) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
    token = f"\0{user}\0{password}".encode()
    return raw.request(36, 1, SaslAuthenticateRequest(auth_bytes=token)).error_code


def _confluent(secure: tuple[ServerProcess, Path], mechanism: str, tls: bool,
               user: str = ALICE, password: str = ALICE_PW) -> dict[str, object]:
    server, cert = secure
    config: dict[str, object] = {
        "bootstrap.servers": f"localhost:{server.kafka_tls_port if tls else server.kafka_port}",
        "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}
    if tls:
        config["ssl.ca.location"] = str(cert)
    return config


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_confluent_logs_in_produces_and_consumes_as_a_group(
        secure: tuple[ServerProcess, Path], mechanism: str, tls: bool) -> None:
    confluent = client_library("confluent_kafka")
    config = _confluent(secure, mechanism, tls)
    topic = f"alice.{mechanism.lower()}-{'tls' if tls else 'tcp'}"
    producer = confluent.Producer(config)
    for i in range(20):
        producer.produce(topic, value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = confluent.Consumer({**config, "group.id": f"alice.{uuid.uuid4().hex[:6]}",
                                   "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    for _ in range(200):
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            got.append(m.value())
        if len(got) == 20:
            break
    consumer.commit(asynchronous=False)
    consumer.close()
    assert got == [f"v{i}".encode() for i in range(20)]


def test_python_clients_and_kafkajs_log_in_with_scram(
        secure: tuple[ServerProcess, Path]) -> None:
    server, _ = secure
    bootstrap = f"127.0.0.1:{server.kafka_port}"
    kafka = client_library("kafka")
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                                   sasl_mechanism="SCRAM-SHA-512", sasl_plain_username=ALICE,
                                   sasl_plain_password=ALICE_PW)
    producer.send("alice.python", b"from kafka-python").get(timeout=30)
    producer.close()
    aiokafka = client_library("aiokafka")

    async def read() -> bytes:
        consumer = aiokafka.AIOKafkaConsumer(
            "alice.python", bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=ALICE,
            sasl_plain_password=ALICE_PW, auto_offset_reset="earliest")
        await consumer.start()
        try:
            return (await asyncio.wait_for(consumer.getone(), 30)).value
        finally:
            await consumer.stop()
    assert asyncio.run(read()) == b"from kafka-python"
    script = """
const { Kafka, logLevel } = require("kafkajs");
(async () => {
  const kafka = new Kafka({ brokers: [process.argv[1]], logLevel: logLevel.NOTHING,
    sasl: { mechanism: "scram-sha-512", username: process.argv[2], password: process.argv[3] } });
  const admin = kafka.admin();
  await admin.connect();
  const topics = await admin.listTopics();
  await admin.disconnect();
  console.log(JSON.stringify(topics));
})().catch((e) => { console.error(String(e)); process.exit(1); });
"""
    out = subprocess.run(["node", "-e", script, bootstrap, ALICE, ALICE_PW], cwd=kafkajs(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert "alice.python" in listed and all(t.startswith("alice.") for t in listed)


def test_kcat_over_tls_with_plain(secure: tuple[ServerProcess, Path]) -> None:
    """(PLAIN: the librdkafka 2.0.2 of Debian's kcat repeats the client nonce in its final
    SCRAM message, which every SCRAM server refuses; newer librdkafka is tested above.)"""
    server, cert = secure
    common = [kcat(), "-b", f"localhost:{server.kafka_tls_port}",
              "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=PLAIN",
              "-X", f"sasl.username={ALICE}",
              "-X", f"sasl.password={ALICE_PW}", "-X", f"ssl.ca.location={cert}"]
    produced = subprocess.run([*common, "-P", "-t", "alice.kcat"], input="one\ntwo\n",
                              capture_output=True, text=True, timeout=60)
    assert produced.returncode == 0, produced.stderr
    consumed = subprocess.run([*common, "-C", "-t", "alice.kcat", "-o", "beginning", "-e"],
                              capture_output=True, text=True, timeout=60)
    assert consumed.stdout.split() == ["one", "two"], consumed.stderr


def test_bad_logins_and_skipped_logins_are_refused(secure: tuple[ServerProcess, Path]) -> None:
    server, _ = secure
    wrong = RawKafka(server.kafka_port)
    assert _login(wrong, ALICE, "not-it") == ErrorCode.sasl_authentication_failed
    assert wrong.closed()
    other_vhost = RawKafka(server.kafka_port)  # a user of another vhost only
    assert _login(other_vhost, "stranger", "stranger-secret") == \
        ErrorCode.sasl_authentication_failed
    assert other_vhost.closed()
    skipped = RawKafka(server.kafka_port)  # this listener needs a login: even guest's
    skipped.send_frame(skipped.frame(3, 5, MetadataRequest(topics=None,
                                                           allow_auto_topic_creation=False)))
    assert skipped.read_frame() == b"" and skipped.closed()
    unknown = RawKafka(server.kafka_port)
    assert unknown.request(17, 1, SaslHandshakeRequest(mechanism="GSSAPI")).error_code == \
        ErrorCode.unsupported_sasl_mechanism
    twice = RawKafka(server.kafka_port)  # a second handshake is out of order
    assert twice.request(17, 1, SaslHandshakeRequest(mechanism="PLAIN")).error_code == \
        ErrorCode.none
    assert twice.request(17, 1, SaslHandshakeRequest(mechanism="PLAIN")).error_code == \
        ErrorCode.illegal_sasl_state
    early = RawKafka(server.kafka_port)  # tokens before any handshake
    assert early.request(36, 1, SaslAuthenticateRequest(
        auth_bytes=f"\0{ALICE}\0{ALICE_PW}".encode())).error_code == \
        ErrorCode.sasl_authentication_failed
    assert early.closed()
    for each in (wrong, other_vhost, skipped, unknown, twice, early):
        each.close()
    assert "Traceback" not in server.log.read_text()


def test_a_handshake_v0_takes_a_bare_token(secure: tuple[ServerProcess, Path]) -> None:
    server, _ = secure
    raw = RawKafka(server.kafka_port)
    from kio.schema.sasl_handshake.v0.request import SaslHandshakeRequest as V0
    assert raw.request(17, 0, V0(mechanism="PLAIN")).error_code == ErrorCode.none
    raw.send_frame(f"\0{ALICE}\0{ALICE_PW}".encode())
    assert raw.read_frame() == b""  # an empty token: accepted
    assert raw.request(3, 5, MetadataRequest(topics=None,
                                             allow_auto_topic_creation=False)).brokers
    raw.close()


def test_permissions_decide_what_a_user_may_do(secure: tuple[ServerProcess, Path]) -> None:
    server, _ = secure
    admin = RawKafka(server.kafka_port)
    assert _login(admin, "guest", "guest") == ErrorCode.none  # guest, from loopback
    assert _create(admin, "bob.private") == ErrorCode.none
    alice = RawKafka(server.kafka_port)
    assert _login(alice, ALICE, ALICE_PW) == ErrorCode.none
    record = encode_batch(0, [(0, None, b"x", [])])
    assert _create(alice, "alice.mine") == ErrorCode.none
    assert _create(alice, "bob.other") == ErrorCode.topic_authorization_failed
    assert _produce(alice, "alice.mine", record)[0] == ErrorCode.none
    assert _produce(alice, "bob.private", record)[0] == ErrorCode.topic_authorization_failed
    listed = alice.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False))
    names = {t.name for t in listed.topics}
    assert "alice.mine" in names and "bob.private" not in names
    asked = alice.request(3, 5, MetadataRequest(topics=(
        __import__("kio.schema.metadata.v5.request", fromlist=["x"]).MetadataRequestTopic(
            name="bob.private"),), allow_auto_topic_creation=False))
    assert asked.topics[0].error_code == ErrorCode.topic_authorization_failed
    assert _commit(alice, "bob.group", "alice.mine", 1) == ErrorCode.group_authorization_failed
    assert _commit(alice, "alice.group", "bob.private", 1) == \
        ErrorCode.topic_authorization_failed
    assert _commit(alice, "alice.group", "alice.mine", 1) == ErrorCode.none
    refused = alice.request(11, 5, join_body("bob.group"))
    assert refused.error_code == ErrorCode.group_authorization_failed
    from kio.schema.delete_groups.v1.request import DeleteGroupsRequest
    deleted = alice.request(42, 1, DeleteGroupsRequest(groups_names=("bob.group",
                                                                      "alice.group")))
    assert [(r.group_id, r.error_code) for r in deleted.results] == [
        ("bob.group", ErrorCode.group_authorization_failed), ("alice.group", ErrorCode.none)]
    for each in (admin, alice):
        each.close()


def test_scram_keys_are_kept_never_the_password(secure: tuple[ServerProcess, Path]) -> None:
    server, _ = secure
    stored = (server.data_dir / "users.json").read_text()
    assert ALICE_PW not in stored
    entry = json.loads(stored)["users"][ALICE]
    assert set(entry["scram"]) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}


def test_a_user_of_one_vhost_cannot_reach_another(secure: tuple[ServerProcess, Path]) -> None:
    """``vhost:user`` logs in to another vhost than the listener's: its topics, groups and
    offsets are that vhost's alone, and a user without permissions there is refused."""
    import pika

    server, _ = secure
    stranger = RawKafka(server.kafka_port)
    assert _login(stranger, "elsewhere:stranger", "stranger-secret") == ErrorCode.none
    assert _create(stranger, "theirs") == ErrorCode.none
    record = encode_batch(0, [(0, None, b"private", [])])
    assert _produce(stranger, "theirs", record)[0] == ErrorCode.none
    assert _commit(stranger, "their-group", "theirs", 1) == ErrorCode.none
    seen = stranger.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False))
    assert {t.name for t in seen.topics} == {"theirs"}  # nothing of vhost '/'

    alice = RawKafka(server.kafka_port)  # alice's vhost is '/'
    assert _login(alice, ALICE, ALICE_PW) == ErrorCode.none
    listed = alice.request(3, 5, MetadataRequest(topics=None, allow_auto_topic_creation=False))
    assert "theirs" not in {t.name for t in listed.topics}
    assert _produce(alice, "theirs", record)[0] in (ErrorCode.topic_authorization_failed,
                                                    ErrorCode.unknown_topic_or_partition)
    assert _commit(alice, "alice.g", "theirs", 1) != ErrorCode.none
    intruder = RawKafka(server.kafka_port)  # alice has no permissions in 'elsewhere'
    assert _login(intruder, f"elsewhere:{ALICE}", ALICE_PW) == \
        ErrorCode.sasl_authentication_failed
    for each in (stranger, alice, intruder):
        each.close()
    # the other faces agree: the topic is a stream of vhost 'elsewhere' only
    with pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", server.port, "elsewhere",
            pika.PlainCredentials("stranger", "stranger-secret"))) as conn:
        conn.channel().queue_declare("theirs", passive=True)
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn, \
            pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare("theirs", passive=True)
