#!/usr/bin/env node
// Generates src/gen/ from proto/lookalike/v1/lookalike.proto with ts-proto: never edited, never committed.
// protoc is $PROTOC, else `protoc` on PATH (Debian's protobuf-compiler), else `$PYTHON -m grpc_tools.protoc`
// (PyPI grpcio-tools); npm's grpc-tools is not used because its install step downloads protoc.
"use strict";
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const protoDir = path.resolve(root, "../../proto");
const out = path.join(root, "src/gen");
const plugin = path.join(root, "node_modules/.bin/protoc-gen-ts_proto");

function works(command, args) {
  const probe = spawnSync(command, [...args, "--version"], { encoding: "utf8" });
  return probe.status === 0;
}

let protoc;
if (process.env.PROTOC) protoc = [process.env.PROTOC];
else if (works("protoc", [])) protoc = ["protoc"];
else if (works(process.env.PYTHON || "python3", ["-m", "grpc_tools.protoc"]))
  protoc = [process.env.PYTHON || "python3", "-m", "grpc_tools.protoc"];
else {
  console.error("generate: no protoc: install Debian's protobuf-compiler or `pip install grpcio-tools`, or set PROTOC");
  process.exit(1);
}

fs.rmSync(out, { recursive: true, force: true });
fs.mkdirSync(out, { recursive: true });
const args = [
  ...protoc.slice(1),
  `--plugin=protoc-gen-ts_proto=${plugin}`,
  `--ts_proto_out=${out}`,
  "--ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,env=node",
  `-I${protoDir}`,
  path.join(protoDir, "lookalike/v1/lookalike.proto"),
];
const run = spawnSync(protoc[0], args, { stdio: "inherit" });
if (run.status !== 0) process.exit(run.status ?? 1);
console.log(`generate: ${path.relative(root, out)}/ from proto/lookalike/v1/lookalike.proto (${protoc.join(" ")})`);
