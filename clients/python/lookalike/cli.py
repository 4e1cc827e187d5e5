"""The `lookalike` command: serve, ingest a folder, search by a photo, list collections."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .client import DEFAULT_SERVER, ById, Client, LookalikeClientError, Text, Texts, image_files


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


INSTALL_SERVER = 'pip install "lookalike[server]"'


def _serve(argv: Sequence[str]) -> int:
    """`lookalike serve ARGS` is `lookalike-server ARGS`: the server package owns the command and its flags."""
    try:
        from lookalike_server.main import main as serve_main
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != "lookalike_server":
            raise
        print(f"lookalike serve: the lookalike server is not installed, only its client; install it with: "
              f"{INSTALL_SERVER}", file=sys.stderr)
        return 2
    return serve_main(argv, prog="lookalike serve")


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
    if args.text is not None and (args.query is not None or args.id):
        print("lookalike search: give a photo, --id ID or --text PROMPT, not several", file=sys.stderr)
        return 2
    if args.text is not None:
        query: object = Text(args.text[0]) if len(args.text) == 1 else Texts(args.text)
    elif args.query is None:
        print("lookalike search: give a photo, a stored id with --id, or --text PROMPT", file=sys.stderr)
        return 2
    elif args.id:
        query = ById(args.query)
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
                infos = [client.create_collection(args.name, args.metric, args.index, dimension=args.dimension,
                                                  vectors_only=args.vectors_only)]
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
        from . import fiftyone_registration  # imports fiftyone: only for this command
    except ImportError as e:
        print(f"lookalike fiftyone-register: FiftyOne is not installed ({e}); pip install 'lookalike[fiftyone]'",
              file=sys.stderr)
        return 2
    if args.print_env:
        for name, value in fiftyone_registration.environment(args.server, args.default).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    path = fiftyone_registration.register(Path(args.config) if args.config else None, server=args.server,
                                          make_default=args.default)
    print(f"registered the lookalike similarity backend in {path}")
    if args.autoload:
        print(f"FiftyOne loads it at every import (module_path in {fiftyone_registration.register_autoload()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike", description="lookalike: a gRPC vision-search server.")
    sub = parser.add_subparsers(dest="command", required=True)
    # Listed for `lookalike --help`; main() hands `serve` and everything after it to the server's own command.
    sub.add_parser("serve", help="run the server (`lookalike serve --help` lists its flags)", add_help=False)

    p = sub.add_parser("ingest", help="store every image under a folder")
    p.add_argument("folder", help="folder of images, read recursively; ids are paths relative to it")
    p.add_argument("--all-files", action="store_true", help="send every file, not only image extensions")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file failed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_server_flags(p)

    p = sub.add_parser("search", help="the k most similar stored images to a photo, a stored id or a text prompt")
    p.add_argument("query", nargs="?", help="an image file, or with --id a stored id")
    p.add_argument("--text", action="append", metavar="PROMPT",
                   help='search by a text prompt, e.g. "a red car" (models with a text tower); several --text '
                        "are searched by their mean")
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
    p.add_argument("--vectors-only", action="store_true",
                   help="create: for vectors computed elsewhere, even of the model's dimension (no image queries)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    _add_connection_flags(p)

    p = sub.add_parser("fiftyone-register", help="register lookalike as a FiftyOne similarity backend")
    p.add_argument("--config", help="brain config JSON to merge into (default: FiftyOne's own)")
    p.add_argument("--server", help="lookalike server for FiftyOne to use (default localhost:50051)")
    p.add_argument("--default", action="store_true", help="make lookalike FiftyOne's default similarity backend")
    p.add_argument("--autoload", action="store_true",
                   help="also load the backend at every `import fiftyone` (needed for compute_similarity with no "
                        "model in scripts that do not import lookalike.fiftyone_brain)")
    p.add_argument("--print-env", action="store_true",
                   help="write no file: print the environment variables that register the backend instead "
                        "(FIFTYONE_MODULE_PATH included), as shell `export` lines")
    return parser


_COMMANDS = {
    "ingest": _ingest,
    "search": _search,
    "collections": _collections,
    "fiftyone-register": _fiftyone_register,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "collections" and args.action in ("create", "drop") and not args.name:
        print(f"lookalike collections {args.action}: name the collection", file=sys.stderr)
        return 2
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
