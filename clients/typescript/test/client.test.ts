// Runs against a live `lookalike serve` at $LOOKALIKE_SERVER, which the harness starts (make clients-test):
// a 4-d vectors-only collection of its own, and one image search against the model's default collection.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";

import { type IngestResult, LookalikeClient, LookalikeError } from "../src";

const server = process.env.LOOKALIKE_SERVER;
if (!server) throw new Error("set LOOKALIKE_SERVER=HOST:PORT of a running `lookalike serve` (make clients-test does)");
const COLLECTION = "clients_typescript";

const client = new LookalikeClient(server, { timeoutMs: 30_000 });

before(async () => {
  await client.waitForReady(30_000);
  const created = await client.createCollection(COLLECTION, { metric: "cosine", indexType: "FLAT", dimension: 4 });
  assert.equal(created.dimension, 4);
  assert.equal(created.model, "");
});

after(async () => {
  await client.dropCollection(COLLECTION);
  await assert.rejects(client.describeCollection(COLLECTION), (e: LookalikeError) => e.code === "NOT_FOUND");
  client.close();
});

test("ingest streams per-item results, a wrong dimension is that item's error", async () => {
  const results: IngestResult[] = [];
  for await (const result of client.ingest(
    [
      { id: "a", vector: [1, 0, 0, 0], metadata: { label: "x", n: 1 } },
      { id: "b", vector: new Float32Array([0, 1, 0, 0]), metadata: { label: "y" } },
      { id: "short", vector: [1, 2, 3] },
      { id: "c", vector: [0.9, 0.1, 0, 0], metadata: { label: "x" } },
    ],
    COLLECTION,
  )) {
    results.push(result);
  }
  assert.deepEqual(
    results.map((r) => [r.id, r.code]),
    [["a", "OK"], ["b", "OK"], ["short", "INVALID_ARGUMENT"], ["c", "OK"]],
  );
  assert.match(results[2].message, /3 dimensions/);
  assert.equal((await client.describeCollection(COLLECTION)).rowCount, 3);
});

test("search by vector and by id with a filter", async () => {
  const hits = await client.search([1, 0, 0, 0], { k: 2, collection: COLLECTION, includeMetadata: true });
  assert.deepEqual(hits.map((h) => h.id), ["a", "c"]);
  assert.ok(Math.abs(hits[0].score - 1) < 1e-4);
  assert.deepEqual(hits[0].metadata, { label: "x", n: 1 });
  const filtered = await client.search({ id: "a" }, { k: 10, collection: COLLECTION, filter: 'metadata["label"] == "y"' });
  assert.deepEqual(filtered.map((h) => h.id), ["b"]);
});

test("get and delete", async () => {
  const rows = await client.get(["a", "missing"], { collection: COLLECTION });
  assert.deepEqual([...rows.keys()], ["a"]);
  assert.deepEqual(rows.get("a")?.metadata, { label: "x", n: 1 });
  assert.deepEqual(rows.get("a")?.vector?.map((v) => Math.round(v * 1e4) / 1e4), [1, 0, 0, 0]);
  assert.equal(await client.delete(["a", "missing"], COLLECTION), 1);
  assert.equal((await client.get(["a"], { collection: COLLECTION })).size, 0);
});

test("an unknown collection is NOT_FOUND for the whole call", async () => {
  await assert.rejects(
    client.search([1, 0, 0, 0], { k: 1, collection: "no_such_collection" }),
    (e: LookalikeError) => e instanceof LookalikeError && e.code === "NOT_FOUND" && /no_such_collection/.test(e.details),
  );
});

test("image search in the model's default collection", async (t) => {
  const image = process.env.LOOKALIKE_TEST_IMAGE;
  if (!image) return t.skip("LOOKALIKE_TEST_IMAGE not set");
  const hits = await client.search(readFileSync(image), { k: 3 });
  assert.equal(hits.length, 3);
  if (process.env.LOOKALIKE_TEST_TOP3) assert.deepEqual(hits.map((h) => h.id), process.env.LOOKALIKE_TEST_TOP3.split(","));
});
