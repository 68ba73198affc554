// kafkajs against tidings serve: create a topic, produce records uncompressed and gzipped,
// list offsets (earliest, latest, by timestamp), delete the topic. Prints one JSON line.
// Usage: node scenario.js <bootstrap> <topic> <count>
const { Kafka, CompressionTypes, logLevel } = require("kafkajs");

async function main() {
  const [bootstrap, topic, countText] = process.argv.slice(2);
  const count = Number(countText);
  const kafka = new Kafka({ clientId: "tidings-test", brokers: [bootstrap], logLevel: logLevel.ERROR });
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const send = async (from, compression) => {
    for (let i = from; i < from + count; i += 1000) {
      const messages = [];
      for (let j = i; j < Math.min(i + 1000, from + count); j++) {
        messages.push({ key: `k${j % 7}`, value: `v${j}`, headers: { h: `x${j}` } });
      }
      await producer.send({ topic, acks: -1, compression, messages });
    }
  };
  await send(0, CompressionTypes.None);
  await new Promise((r) => setTimeout(r, 50));
  const middle = Date.now();
  await new Promise((r) => setTimeout(r, 50));
  await send(count, CompressionTypes.GZIP);
  await producer.disconnect();
  const offsets = await admin.fetchTopicOffsets(topic);
  const byTime = await admin.fetchTopicOffsetsByTimestamp(topic, middle);
  const listed = await admin.listTopics();
  await admin.deleteTopics({ topics: [topic] });
  const after = await admin.listTopics();
  await admin.disconnect();
  console.log(JSON.stringify({ created, offsets, byTime, listed: listed.includes(topic),
                               deleted: !after.includes(topic) }));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
