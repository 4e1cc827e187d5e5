#!/usr/bin/env node
// lookalike-search-ts PHOTO [-k K] [--server HOST:PORT] [--collection NAME]: the top k stored ids for a photo.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { LookalikeClient } from "../src";

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      k: { type: "string", short: "k", default: "3" },
      server: { type: "string", default: process.env.LOOKALIKE_SERVER ?? "localhost:50051" },
      collection: { type: "string", default: "" },
    },
  });
  if (positionals.length !== 1) {
    console.error("usage: lookalike-search-ts PHOTO [-k K] [--server HOST:PORT] [--collection NAME]");
    process.exit(2);
  }
  const client = new LookalikeClient(values.server, { collection: values.collection });
  try {
    const hits = await client.search(readFileSync(positionals[0]), { k: Number(values.k) });
    hits.forEach((hit, i) => console.log(`${String(i + 1).padStart(4)}  ${hit.score.toFixed(4).padStart(8)}  ${hit.id}`));
  } finally {
    client.close();
  }
}

main().catch((e) => {
  console.error(`lookalike-search-ts: ${e.message}`);
  process.exit(1);
});
