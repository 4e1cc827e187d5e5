"""The `lookalike` command: serve, ingest a folder, search by a photo, list collections."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .client import DEFAULT_SERVER, ById, Client, LookalikeClientError, image_files


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help="HOST:PORT, several comma-separated, or a gRPC target like dns:///name:port "
                             "(default %(default)s)")
    parser.add_argument("--token", default=os.environ.get("LOOKALIKE_TOKEN"),
                        help="bearer token (default: $LOOKALIKE_TOKEN)")
    parser.add_argument("--ca-cert", help="CA certificate (PEM) to connect over TLS")
    parser.add_argument("--client-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--client-key", help="client key (PEM) for mutual TLS")


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    _add_connection_flags(parser)
    parser.add_argument("--collection", default="", help="collection name (default: the server's default)")


def _client(args: argparse.Namespace, collection: str = "") -> Client:
    return Client(args.server, collection, token=args.token, ca_cert=args.ca_cert, client_cert=args.client_cert,
                  client_key=args.client_key)


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the server", description="Run the lookalike gRPC server.")
    # Defaults are None so that LOOKALIKE_* variables and the config file apply unless a flag is given.
    p.add_argument("--config", help="TOML file with settings (flags and LOOKALIKE_* variables win)")
    p.add_argument("--address", help="listen address (default localhost:50051)")
    p.add_argument("--data-dir", help="where Milvus Lite keeps its data (default ./lookalike-data)")
    p.add_argument("--milvus-uri", help="use this Milvus instead of an embedded one, e.g. http://host:19530")
    p.add_argument("--milvus-embedded", choices=["auto", "lite", "lite-server", "standalone"],
                   help="embedded Milvus without --milvus-uri: Milvus Lite in-process, Milvus Lite as a child "
                        "server, or the real Milvus standalone server as a managed child process; auto (default): "
                        "the one already holding the data directory's data, else standalone when installed, else lite")
    p.add_argument("--milvus-standalone-venv", help="venv with the PyPI package `milvus` (default .venv-milvus)")
    p.add_argument("--milvus-user")
    p.add_argument("--milvus-password")
    p.add_argument("--milvus-token")
    p.add_argument("--milvus-db-name")
    p.add_argument("--milvus-tls", action="store_true", default=None, help="connect to Milvus over TLS")
    p.add_argument("--milvus-ca-cert", help="CA certificate (PEM) for Milvus TLS")
    p.add_argument("--milvus-client-cert", help="client certificate (PEM) for Milvus mutual TLS")
    p.add_argument("--milvus-client-key", help="client key (PEM) for Milvus mutual TLS")
    p.add_argument("--milvus-server-name", help="expected server name in Milvus' certificate")
    p.add_argument("--model-card", help="card.toml of the ONNX model to serve (default: EfficientNet-Lite0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "tensorrt"], help="where to embed (default auto)")
    p.add_argument("--default-collection", help="collection used when a call names none (default 'default')")
    p.add_argument("--require-gpu", action="store_true", default=None,
                   help="refuse to start unless a GPU execution provider is really active")
    p.add_argument("--fp16", action="store_true", default=None,
                   help="on a GPU, run the network in float16 (faster; embeddings agree to about 1e-3)")
    p.add_argument("--max-batch-size", type=int, help="images per inference batch (default: 4 on CPU, 64 on GPU)")
    p.add_argument("--max-queue-delay-ms", type=float, help="longest wait to fill a batch (default 5)")
    p.add_argument("--auth-tokens-file", help="file of 'read TOKEN' / 'write TOKEN' lines: require bearer tokens")
    p.add_argument("--tls-cert", help="server certificate (PEM): serve over TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="CA (PEM) that signs client certificates: require mutual TLS")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--max-inflight-requests", type=int, help="calls in flight before RESOURCE_EXHAUSTED (1024)")
    p.add_argument("--max-streams-per-client", type=int, help="open streams per client host (default 64)")
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    p.add_argument("--stream-window-bytes", type=int,
                   help="bytes a client may send ahead of the server on one stream (default 1 MiB)")
    p.add_argument("--max-image-bytes", type=int, help="largest image assembled from chunks (default 256 MiB)")
    p.add_argument("--max-image-pixels", type=int, help="decompression-bomb limit in pixels (default 89478485)")
    p.add_argument("--max-connection-age-s", type=float,
                   help="close client connections after this long so balanced clients find new replicas (off)")
    p.add_argument("--shutdown-grace-s", type=float, help="seconds to finish calls in flight on SIGTERM (10)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    p.add_argument("--workers", type=int,
                   help="server processes sharing the port (default 1): more cores for many small searches; "
                        "needs a Milvus server (--milvus-uri, or --milvus-embedded standalone / lite-server)")


def _serve(args: argparse.Namespace) -> int:
    from lookalike_server.config import ServerConfig
    from lookalike_server.main import serve

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "func")}
    try:
        config = ServerConfig.load(flags, config_file=args.config)
    except (ValueError, OSError) as e:
        print(f"lookalike serve: {e}", file=sys.stderr)
        return 2
    serve(config)
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    root = Path(args.folder)
    if not root.is_dir():
        print(f"lookalike ingest: {root} is not a folder", file=sys.stderr)
        return 2
    total = sum(1 for _ in image_files(root, args.all_files))
    stored, failed = 0, []
    started = time.monotonic()
    with _client(args, args.collection) as client, tqdm(
        total=total, unit="img", desc="ingest", disable=args.quiet or None
    ) as bar:
        try:
            for result in client.ingest_folder(root, all_files=args.all_files):
                if result.ok:
                    stored += 1
                else:
                    failed.append(result)
                bar.update(1)
        except LookalikeClientError as e:
            bar.close()
            print(f"lookalike ingest: {e}", file=sys.stderr)
            return 1
    seconds = time.monotonic() - started
    rate = stored / seconds if seconds > 0 else 0.0
    print(f"stored {stored} of {total} images from {root} in {seconds:.1f} s ({rate:.1f} img/s)")
    if failed:
        print(f"{len(failed)} failed:")
        for result in failed:
            print(f"  {result.id}: {result.code}: {result.message}")
    return 1 if failed and args.strict else 0


def _search(args: argparse.Namespace) -> int:
    if args.id:
        query: object = ById(args.query)
    else:
        query = Path(args.query)
        if not query.is_file():
            print(f"lookalike search: {query} is not a file (use --id to search by a stored id)", file=sys.stderr)
            return 2
    started = time.monotonic()
    with _client(args, args.collection) as client:
        try:
            hits = client.search(query, k=args.k, filter=args.filter, include_metadata=args.metadata)
        except LookalikeClientError as e:
            print(f"lookalike search: {e}", file=sys.stderr)
            return 1
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps([{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hits], indent=2))
        return 0
    width = max((len(h.id) for h in hits), default=2)
    print(f"{'rank':>4}  {'score':>8}  {'id':<{width}}" + ("  metadata" if args.metadata else ""))
    for rank, h in enumerate(hits, 1):
        extra = f"  {json.dumps(h.metadata)}" if args.metadata else ""
        print(f"{rank:>4}  {h.score:>8.4f}  {h.id:<{width}}{extra}")
    print(f"{len(hits)} results in {seconds * 1000:.0f} ms", file=sys.stderr)
    return 0


def _collections(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            if args.action == "create":
                infos = [client.create_collection(args.name, args.metric, args.index, dimension=args.dimension)]
            elif args.action == "drop":
                client.drop_collection(args.name)
                print(f"dropped {args.name}")
                return 0
            elif args.action == "describe":
                infos = [client.describe_collection(args.name)]
            else:
                infos = client.list_collections()
        except LookalikeClientError as e:
            print(f"lookalike collections: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([dataclasses.asdict(i) for i in infos], indent=2))
        return 0
    print(f"{'name':<20} {'rows':>10} {'dim':>5} {'metric':<7} {'index':<9} {'model':<20} provider")
    for i in infos:
        print(f"{i.name:<20} {i.row_count:>10} {i.dimension:>5} {i.metric:<7} {i.index_type:<9} {i.model:<20} "
              f"{i.execution_provider}")
    return 0


def _fiftyone_register(args: argparse.Namespace) -> int:
    try:
        from . import fiftyone_brain  # imports fiftyone: only for this command
    except ImportError as e:
        print(f"lookalike fiftyone-register: FiftyOne is not installed ({e}); pip install 'lookalike[fiftyone]'",
              file=sys.stderr)
        return 2
    path = fiftyone_brain.register(Path(args.config) if args.config else None, server=args.server,
                                   make_default=args.default)
    print(f"registered the lookalike similarity backend in {path}")
    if args.autoload:
        print(f"FiftyOne loads it at every import (module_path in {fiftyone_brain.register_autoload()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="lookalike: a gRPC vision-search server.")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    p = sub.add_parser("ingest", help="store every image under a folder")
    p.add_argument("folder", help="folder of images, read recursively; ids are paths relative to it")
    p.add_argument("--all-files", action="store_true", help="send every file, not only image extensions")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_server_flags(p)

    p = sub.add_parser("search", help="the k most similar stored images to a photo")
    p.add_argument("query", help="an image file, or with --id a stored id")
    p.add_argument("-k", type=int, default=10, help="how many results (default %(default)s)")
    p.add_argument("--id", action="store_true", help="QUERY is a stored id, not a file")
    p.add_argument("--filter", default="", help='Milvus expression over metadata, e.g. \'metadata["label"] == "cat"\'')
    p.add_argument("--metadata", action="store_true", help="show each hit's metadata")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_server_flags(p)

    p = sub.add_parser("collections", help="list, describe, create or drop collections")
    p.add_argument("action", nargs="?", default="list", choices=["list", "describe", "create", "drop"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--metric", default="", choices=["", "cosine", "ip", "l2"])
    p.add_argument("--index", default="", choices=["", "FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN"])
    p.add_argument("--dimension", type=int, default=0,
                   help="create: vectors-only collection of this dimension (default: the server model's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_connection_flags(p)

    p = sub.add_parser("fiftyone-register", help="register lookalike as a FiftyOne similarity backend")
    p.add_argument("--config", help="brain config JSON to merge into (default: FiftyOne's own)")
    p.add_argument("--server", help="lookalike server for FiftyOne to use (default localhost:50051)")
    p.add_argument("--default", action="store_true", help="make lookalike FiftyOne's default similarity backend")
    p.add_argument("--autoload", action="store_true",
                   help="also load the backend at every `import fiftyone` (needed for compute_similarity with no "
                        "model in scripts that do not import lookalike.fiftyone_brain)")
    return parser


_COMMANDS = {
    "serve": _serve,
    "ingest": _ingest,
    "search": _search,
    "collections": _collections,
    "fiftyone-register": _fiftyone_register,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "collections" and args.action in ("create", "drop") and not args.name:
        print(f"lookalike collections {args.action}: name the collection", file=sys.stderr)
        return 2
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
