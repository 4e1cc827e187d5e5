"""FiftyOne similarity backend `lookalike`: FiftyOne's brain indexes and searches through a lookalike server.

The same Config / Similarity / Index triad as fiftyone-brain's Milvus backend, talking only to lookalike's
gRPC API. Config and Similarity are here; the Index is lookalike.fiftyone_index (its queries in fiftyone_search,
the images it sends in fiftyone_media). With no `model` and no `embeddings`,
`fob.compute_similarity(dataset, backend="lookalike")` streams each sample's image (or each object patch) to the
server, which embeds and stores it.

Register the backend once (`lookalike fiftyone-register`, or `register()` in lookalike.fiftyone_registration),
or with the environment (`lookalike fiftyone-register --print-env` prints it):
`FIFTYONE_MODULE_PATH=lookalike.fiftyone_autoload`, `FIFTYONE_BRAIN_SIMILARITY_BACKENDS="*,lookalike"` and
`FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS=lookalike.fiftyone_brain.LookalikeSimilarityConfig`.
Without the first, FiftyOne loads its default zoo model before importing the backend when no model is given:
the backend then stops with an error saying so rather than store that model's vectors.
"""

from __future__ import annotations

from typing import Any

import fiftyone.brain.similarity as fbs

from lookalike.client import DEFAULT_SERVER
from lookalike.fiftyone_common import CONSISTENCY_LEVELS, INDEX_TYPES, MAX_K, METRICS
from lookalike.fiftyone_index import LookalikeSimilarityIndex as LookalikeSimilarityIndex  # importable here
from lookalike.fiftyone_registration import BACKEND, chosen_model_message, install, model_fiftyone_chose
from lookalike.fiftyone_registration import CONFIG_CLS as CONFIG_CLS  # these three: importable here, as before
from lookalike.fiftyone_registration import register as register
from lookalike.fiftyone_registration import register_autoload as register_autoload


class LookalikeSimilarityConfig(fbs.SimilarityConfig):
    """Configuration for the lookalike similarity backend.

    Args:
        collection_name (None): the lookalike collection to use or create; by default a new one named
            ``lookalike_fiftyone_<dataset>`` (``_2``, ``_3``... when taken, in lookalike or in Milvus itself)
        metric ("cosine"): ``"cosine"``, ``"dotproduct"`` or ``"euclidean"`` (lookalike's cosine, ip, l2)
        index_type (None): ``"FLAT"``, ``"HNSW"``, ``"IVF_FLAT"``, ``"IVF_SQ8"``, or on a Milvus server
            ``"IVF_PQ"`` or ``"SCANN"``; None is the server's default
        index_params (None): index build parameters, e.g. ``{"M": 16, "efConstruction": 200}``
        min_recall (None): the recall a search must reach by default; None is the server's (0.99)
        consistency_level ("Session"): ``"Strong"``, ``"Session"``, ``"Bounded"`` or ``"Eventually"``
        server (None): the server's ``HOST:PORT``; None means ``localhost:50051``
        server_model (None): the server model that embedded the images, when the server did (set by the backend)
        embeddings_from_server (False): declares that vectors given to ``compute_similarity(embeddings=...)`` or
            ``add_to_index()`` were computed by this server's model (``Client.embed``, say), so the collection
            carries that model and the server embeds image and text queries for it. Otherwise such vectors get a
            vectors-only collection, which the server never labels with its model: queries by vector or id only
        token (None): a bearer token sent as ``authorization: Bearer <token>``
        secure (None): whether to use TLS (implied by any of the certificate paths)
        ca_pem_path (None): the CA certificate that signed the server's certificate
        client_pem_path (None): a client certificate, for mutual TLS
        client_key_path (None): the client certificate's key, for mutual TLS
        server_name (None): the name to expect in the server's certificate
        **kwargs: keyword arguments for :class:`fiftyone.brain.similarity.SimilarityConfig`
    """

    def __init__(
        self,
        collection_name: str | None = None,
        metric: str = "cosine",
        index_type: str | None = None,
        index_params: dict[str, int] | None = None,
        min_recall: float | None = None,
        consistency_level: str = "Session",
        server: str | None = None,
        server_model: str | None = None,
        embeddings_from_server: bool = False,
        token: str | None = None,
        secure: bool | None = None,
        ca_pem_path: str | None = None,
        client_pem_path: str | None = None,
        client_key_path: str | None = None,
        server_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"Unsupported metric {metric!r}. Supported values are {tuple(METRICS)}")
        if index_type is not None and index_type.upper() not in INDEX_TYPES:
            raise ValueError(f"Unsupported index_type {index_type!r}. Supported values are {INDEX_TYPES}")
        if consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"Unsupported consistency_level {consistency_level!r}. Supported values are {CONSISTENCY_LEVELS}"
            )
        super().__init__(**kwargs)
        self.collection_name = collection_name
        self.metric = metric
        self.index_type = index_type.upper() if index_type else None
        self.index_params = dict(index_params) if index_params else None
        self.min_recall = min_recall
        self.consistency_level = consistency_level
        self.server = server or DEFAULT_SERVER
        self.server_model = server_model
        self.embeddings_from_server = bool(embeddings_from_server)
        # Kept private so they are never written to the database (as FiftyOne's Milvus backend does).
        self._token = token
        self._secure = secure
        self._ca_pem_path = ca_pem_path
        self._client_pem_path = client_pem_path
        self._client_key_path = client_key_path
        self._server_name = server_name

    @property
    def method(self) -> str:
        return BACKEND

    @property
    def max_k(self) -> int:
        return MAX_K

    @property
    def supports_least_similarity(self) -> bool:
        return True

    @property
    def supported_aggregations(self) -> tuple[str, ...]:
        return ("mean",)

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value

    @property
    def secure(self) -> bool | None:
        return self._secure

    @secure.setter
    def secure(self, value: bool | None) -> None:
        self._secure = value

    @property
    def ca_pem_path(self) -> str | None:
        return self._ca_pem_path

    @ca_pem_path.setter
    def ca_pem_path(self, value: str | None) -> None:
        self._ca_pem_path = value

    @property
    def client_pem_path(self) -> str | None:
        return self._client_pem_path

    @client_pem_path.setter
    def client_pem_path(self, value: str | None) -> None:
        self._client_pem_path = value

    @property
    def client_key_path(self) -> str | None:
        return self._client_key_path

    @client_key_path.setter
    def client_key_path(self, value: str | None) -> None:
        self._client_key_path = value

    @property
    def server_name(self) -> str | None:
        return self._server_name

    @server_name.setter
    def server_name(self, value: str | None) -> None:
        self._server_name = value

    def load_credentials(
        self,
        server: str | None = None,
        token: str | None = None,
        secure: bool | None = None,
        ca_pem_path: str | None = None,
        client_pem_path: str | None = None,
        client_key_path: str | None = None,
        server_name: str | None = None,
    ) -> None:
        """Connection settings for `load_brain_results`: keyword arguments, else the brain config/env."""
        self._load_parameters(
            server=server,
            token=token,
            secure=secure,
            ca_pem_path=ca_pem_path,
            client_pem_path=client_pem_path,
            client_key_path=client_key_path,
            server_name=server_name,
        )


class LookalikeSimilarity(fbs.Similarity):
    """The lookalike similarity factory."""

    def ensure_requirements(self) -> None:
        """Stops a run whose model FiftyOne chose itself (the backend was imported too late to embed on the
        server), before any brain run, collection or embedding exists. grpcio and the stubs come with lookalike."""
        if self.config.model is not None:
            chosen = model_fiftyone_chose()
            if chosen is not None:
                raise ValueError(chosen_model_message(chosen))

    def ensure_usage_requirements(self) -> None:
        pass

    def initialize(self, samples: Any, brain_key: str | None) -> LookalikeSimilarityIndex:
        return LookalikeSimilarityIndex(samples, self.config, brain_key, backend=self)


# The import-time step: `compute_similarity` with no model embeds on the server, and the backend is registered
# in this process's brain config (lookalike.fiftyone_registration; it imports nothing from here).
install(LookalikeSimilarityConfig)
