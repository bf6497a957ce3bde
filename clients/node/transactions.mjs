// Transactions through ioredis against a meridian proxy: multi().exec(), WATCH,
// and the case that once applied writes twice (a client retrying a failed EXEC).
//
// Usage: node transactions.mjs PORT
import assert from "node:assert/strict";
import Redis from "ioredis";

const port = Number(process.argv[2]);
const r = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 1 });
const other = new Redis({ host: "127.0.0.1", port, maxRetriesPerRequest: 1 });

try {
  await r.del("{js}:c", "{js}:w");
  await r.set("{js}:c", 1);
  const replies = await r.multi().incr("{js}:c").get("{js}:c").exec();
  assert.deepEqual(replies, [[null, 2], [null, "2"]]);
  assert.equal(await r.get("{js}:c"), "2", "the counter moved once");

  await r.watch("{js}:w");
  await other.set("{js}:w", "theirs");
  const aborted = await r.multi().set("{js}:w", "mine").exec();
  assert.equal(aborted, null, "a watched key written by another client aborts");
  assert.equal(await r.get("{js}:w"), "theirs");

  await r.watch("{js}:w");
  const ran = await r.multi().set("{js}:w", "mine").exec();
  assert.deepEqual(ran, [[null, "OK"]]);
  console.log("ioredis transactions: ok");
} finally {
  r.disconnect();
  other.disconnect();
}
