"""Text search end to end with the tiny two-tower card: the server's answer is exactly the brute-force answer
over the stored vectors for the text vector that onnxruntime computes directly from the card's files, through
the CLI, grpcurl and the Python client; every bad prompt gets its precise status and streams go on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from lookalike import Client, LookalikeClientError, Text, Texts
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.testing.tiny_clip import CONTEXT_LENGTH, write_tiny_clip
from tests.conftest import ServerProcess

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def text_server(tmp_path_factory, tiny_card, photos_dir):
    """`lookalike serve --model-card DIR/card.toml`, with the test photos ingested into its default collection."""
    proc = ServerProcess(tmp_path_factory.mktemp("text-server"), "--model-card", str(tiny_card))
    try:
        proc.wait_ready()
        with Client(proc.address) as client:
            results = list(client.ingest_folder(photos_dir))
        assert results and all(r.ok for r in results), [r for r in results if not r.ok]
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def text_client(text_server):
    with Client(text_server.address) as client:
        yield client


def direct_text_vector(card: Path, prompts: list[str]) -> np.ndarray:
    """The query vector as onnxruntime computes it from the card's own files: each prompt tokenized by
    `tokenizers`, run through text.onnx, L2-normalised; several prompts averaged and normalised again."""
    tokenizer = Tokenizer.from_file(str(card.parent / "tokenizer.json"))
    session = ort.InferenceSession(str(card.parent / "text.onnx"), providers=["CPUExecutionProvider"])
    vectors = []
    for prompt in prompts:
        ids = np.array([tokenizer.encode(prompt).ids], dtype=np.int64)
        (out,) = session.run(["text_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        vectors.append(out[0] / np.linalg.norm(out[0]))
    mean = np.mean(vectors, axis=0)
    return mean / np.linalg.norm(mean)


def brute_force(client: Client, photos_dir: Path, query: np.ndarray, k: int) -> list[str]:
    """The k stored ids nearest to `query` by cosine, over every stored vector read back from the server."""
    ids = sorted(p.name for p in photos_dir.iterdir())
    rows = client.get(ids, vectors=True, metadata=False)
    assert len(rows) == len(ids)
    scores = {i: float(np.dot(vector, query)) for i, (vector, _) in rows.items()}
    ranked = sorted(scores, key=lambda i: (-scores[i], i))
    assert scores[ranked[k - 1]] - scores[ranked[k]] > 1e-4, "a near tie at k: pick another prompt"
    return ranked[:k]


def test_done_when_cli_grpcurl_and_client_give_the_brute_force_top_3(text_server, text_client, tiny_card,
                                                                     photos_dir):
    expected = brute_force(text_client, photos_dir, direct_text_vector(tiny_card, ["anything"]), 3)

    cli = subprocess.run([sys.executable, "-m", "lookalike.cli", "search", "--text", "anything", "-k", "3", "--json",
                          "--server", text_server.address], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert [h["id"] for h in json.loads(cli.stdout)] == expected

    request = json.dumps({"queries": [{"text": "anything"}], "k": 3})
    reply = subprocess.run([GRPCURL, "-plaintext", "-d", request, text_server.address, "lookalike.v1.Images/Search"],
                           capture_output=True, text=True, timeout=60)
    assert reply.returncode == 0, reply.stderr
    assert [h["id"] for h in json.loads(reply.stdout)["results"][0]["hits"]] == expected

    hits = text_client.search(Text("anything"), k=3)
    assert [h.id for h in hits] == expected
    query = direct_text_vector(tiny_card, ["anything"])
    stored = text_client.get(expected, vectors=True, metadata=False)
    for hit in hits:  # exact cosine scores against the directly computed text vector
        assert hit.score == pytest.approx(float(np.dot(stored[hit.id][0], query)), abs=1e-5)


def test_several_prompts_are_searched_by_their_mean(text_client, tiny_card, photos_dir):
    prompts = ["a red car", "a kite high in the sky", "coffee"]
    expected = brute_force(text_client, photos_dir, direct_text_vector(tiny_card, prompts), 5)
    assert [h.id for h in text_client.search(Texts(prompts), k=5)] == expected
    cli = subprocess.run([sys.executable, "-m", "lookalike.cli", "search", *(a for p in prompts for a in ("--text", p)),
                          "-k", "5", "--json", "--server", text_client.server], capture_output=True, text=True,
                         timeout=120)
    assert [h["id"] for h in json.loads(cli.stdout)] == expected


def test_embed_returns_the_direct_text_vectors_after_the_images(text_client, tiny_card, photos_dir):
    np.testing.assert_allclose(text_client.embed_texts(["a red car", "dog"]),
                               [direct_text_vector(tiny_card, ["a red car"]), direct_text_vector(tiny_card, ["dog"])],
                               atol=1e-5)
    request = pb.EmbedRequest(
        items=[pb.ImageItem(id="photo", image=(photos_dir / "coffee.jpg").read_bytes())],
        texts=[pb.TextItem(id="t1", text="a cat"), pb.TextItem(id="t2", text=" "),
               pb.TextItem(id="t3", text="cat " * 100), pb.TextItem(id="t4", text="a dog")],
    )
    with grpc.insecure_channel(text_client.server) as channel:
        reply = pb_grpc.ImagesStub(channel).Embed(request, timeout=60)
    assert [(r.id, pb.StatusCode.Name(r.code)) for r in reply.results] == [
        ("photo", "OK"), ("t1", "OK"), ("t2", "INVALID_ARGUMENT"), ("t3", "INVALID_ARGUMENT"), ("t4", "OK")]
    assert reply.results[2].message == "text 't2' is empty: a prompt needs at least one word"
    assert reply.results[3].message.startswith("text 't3' is ") and "never cut" in reply.results[3].message
    np.testing.assert_allclose(reply.results[4].vector.values, direct_text_vector(tiny_card, ["a dog"]), atol=1e-5)


def test_collection_info_says_which_collections_embed_text(text_client):
    assert text_client.describe_collection("default").embeds_text
    text_client.create_collection("foreign_vectors", "cosine", "FLAT", dimension=32)
    try:
        info = text_client.describe_collection("foreign_vectors")
        assert not info.embeds_text and info.model == ""
        with pytest.raises(LookalikeClientError) as e:
            text_client.search(Text("a red car"), k=3, collection="foreign_vectors")
        assert e.value.code == "FAILED_PRECONDITION"
        assert e.value.details == (
            "collection 'foreign_vectors' is vectors-only: it holds 32-d vectors computed elsewhere (no model), "
            "so a text query cannot be embedded for it; search by vector or stored id")
    finally:
        text_client.drop_collection("foreign_vectors")


@pytest.mark.parametrize(("query", "message"), [
    (Text(""), "text is empty: a prompt needs at least one word"),
    (Text(" \t\n "), "text is empty: a prompt needs at least one word"),
    (Texts([]), "a query by several texts needs at least one text"),
    (Texts(["a cat", ""]), "text 2 of 2 is empty: a prompt needs at least one word"),
])
def test_bad_prompts_get_invalid_argument(text_client, query, message):
    with pytest.raises(LookalikeClientError) as e:
        text_client.search(query, k=3)
    assert (e.value.code, e.value.details) == ("INVALID_ARGUMENT", message)


def test_a_prompt_over_the_context_length_is_refused_not_cut(text_client):
    with pytest.raises(LookalikeClientError) as e:
        text_client.search(Text("a red car " * 40), k=3)
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.details.startswith("text is ") and e.value.details.endswith(
        f"tokens long with its start and end tokens; model 'tiny-clip' reads at most {CONTEXT_LENGTH}: "
        "shorten it (prompts are refused, never cut)")


def test_search_stream_goes_on_after_a_bad_prompt(text_client):
    requests = [pb.SearchRequest(request_id=r, k=2, queries=[pb.Query(text=t)])
                for r, t in (("a", "a cat"), ("b", ""), ("c", "cat " * 100), ("d", "a dog"))]
    with grpc.insecure_channel(text_client.server) as channel:
        replies = list(pb_grpc.ImagesStub(channel).SearchStream(iter(requests), timeout=60))
    assert [(r.request_id, pb.StatusCode.Name(r.code), len(r.results)) for r in replies] == [
        ("a", "OK", 1), ("b", "INVALID_ARGUMENT", 0), ("c", "INVALID_ARGUMENT", 0), ("d", "OK", 1)]
    assert replies[1].message == "text is empty: a prompt needs at least one word"
    assert len(replies[3].results[0].hits) == 2


def test_invalid_utf8_never_reaches_the_text_tower(text_client):
    # The Python client cannot even build such a prompt: it says so before sending.
    with pytest.raises(ValueError, match=r"cannot be sent: it is not valid Unicode .*protobuf strings must be UTF-8"):
        text_client.search(Text("a \ud800 cat"), k=3)
    # Raw bytes on the wire: proto3 strings are checked by protobuf's parser before any lookalike code runs;
    # the server answers the failed parse with INVALID_ARGUMENT and the parser's words.
    good = pb.SearchRequest(k=3, queries=[pb.Query(text="XX")]).SerializeToString()
    with grpc.insecure_channel(text_client.server) as channel:
        raw = channel.unary_unary("/lookalike.v1.Images/Search", request_serializer=lambda b: b,
                                  response_deserializer=pb.SearchResponse.FromString)
        with pytest.raises(grpc.RpcError) as e:
            raw(good.replace(b"XX", b"\xff\xfe"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "String field had bad UTF-8" in e.value.details()
        assert len(raw(good.replace(b"XX", "é".encode()), timeout=30).results[0].hits) == 3  # the server is fine
    # grpcurl reads JSON: it replaces invalid bytes with U+FFFD before sending, and that prompt is embedded.
    reply = subprocess.run([GRPCURL, "-plaintext", "-d", "@", text_client.server, "lookalike.v1.Images/Embed"],
                           input=b'{"texts": [{"id": "x", "text": "a \xff cat"}]}', capture_output=True, timeout=60)
    assert reply.returncode == 0, reply.stderr
    vector = json.loads(reply.stdout)["results"][0]["vector"]["values"]
    np.testing.assert_allclose(vector, text_client.embed_texts(["a \ufffd cat"])[0], atol=1e-6)


def test_a_model_without_a_text_tower_names_itself(client, collection, photos_dir):
    """The default EfficientNet card: text queries and text items are FAILED_PRECONDITION naming the model."""
    assert not client.describe_collection(collection).embeds_text
    with pytest.raises(LookalikeClientError) as e:
        client.search(Text("a red car"), k=3, collection=collection)
    assert e.value.code == "FAILED_PRECONDITION"
    assert e.value.details.startswith("model 'efficientnet-lite0' has no text tower, so text cannot be embedded: "
                                      "serve a card with a [text] section (cards with one: none here: "
                                      "models/clip-vit-b-32/export.py writes one")
    request = pb.EmbedRequest(items=[pb.ImageItem(id="p", image=(photos_dir / "coffee.jpg").read_bytes())],
                              texts=[pb.TextItem(id="t", text="a red car")])
    with grpc.insecure_channel(client.server) as channel:
        reply = pb_grpc.ImagesStub(channel).Embed(request, timeout=60)
    assert [(r.id, pb.StatusCode.Name(r.code)) for r in reply.results] == [("p", "OK"), ("t", "FAILED_PRECONDITION")]
    assert reply.results[1].message.startswith("model 'efficientnet-lite0' has no text tower, so text 't' cannot")


def test_the_cli_asks_for_one_kind_of_query(capsys):
    from lookalike.cli import main

    assert main(["search", "--server", "127.0.0.1:1"]) == 2
    assert "give a photo, a stored id with --id, or --text PROMPT" in capsys.readouterr().err
    assert main(["search", "x.jpg", "--text", "a cat", "--server", "127.0.0.1:1"]) == 2
    assert "not several" in capsys.readouterr().err
