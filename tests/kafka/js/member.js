// One kafkajs consumer-group member for tests/kafka/test_group_clients.py, run as its own
// process: node member.js <bootstrap> <topic> <group> <session_ms>
// Prints JSON lines as tests/kafka/member.py does; SIGTERM disconnects (leaves the group).
const { Kafka, logLevel } = require("kafkajs");

function say(event) { process.stdout.write(JSON.stringify(event) + "\n"); }

async function main() {
  const [bootstrap, topic, group, sessionText] = process.argv.slice(2);
  const kafka = new Kafka({ clientId: "member-kafkajs", brokers: [bootstrap], logLevel: logLevel.NOTHING });
  const consumer = kafka.consumer({ groupId: group, sessionTimeout: Number(sessionText),
                                    heartbeatInterval: 500, rebalanceTimeout: Number(sessionText),
                                    maxWaitTimeInMs: 500 });
  consumer.on(consumer.events.GROUP_JOIN, (e) => {
    const mine = (e.payload.memberAssignment[topic] || []).slice().sort((a, b) => a - b);
    say({ assigned: mine });
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let stopping = false;
  process.on("SIGTERM", async () => {
    if (stopping) return;
    stopping = true;
    await consumer.disconnect();
    process.exit(0);
  });
  await consumer.run({
    autoCommitInterval: 200,
    eachMessage: async ({ partition, message }) => {
      say({ record: [partition, Number(message.offset), message.value.toString()] });
    },
  });
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
