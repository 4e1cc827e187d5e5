// A typed client over the stubs that ts-proto generates from proto/lookalike/v1/lookalike.proto (src/gen/).
import { once } from "node:events";

import {
  ChannelCredentials,
  type ClientOptions,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";

import {
  type CollectionInfo as WireCollectionInfo,
  CollectionsClient,
  Consistency,
  type Hit as WireHit,
  ImagesClient,
  IndexType,
  indexTypeToJSON,
  type IngestRequest,
  Metric,
  metricToJSON,
  type Query as WireQuery,
  statusCodeToJSON,
} from "./gen/lookalike/v1/lookalike";

export const DEFAULT_SERVER = "localhost:50051";
// Images larger than this go as several chunk messages of the same id; the server joins them.
export const CHUNK_BYTES = 4 * 1024 * 1024;
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** A call failed: `code` is the gRPC status name (e.g. "NOT_FOUND"), `details` the server's message. */
export class LookalikeError extends Error {
  constructor(
    readonly code: string,
    readonly details: string,
  ) {
    super(`${code}: ${details}`);
    this.name = "LookalikeError";
  }
}

/** A query: a vector, image bytes, a stored id, several ids or vectors (their mean), or a text prompt. */
export type Query =
  | number[]
  | Float32Array
  | Uint8Array
  | { id: string }
  | { ids: string[] }
  | { vectors: Array<number[] | Float32Array> }
  | { text: string };

export type MetricName = "cosine" | "ip" | "l2";
export type IndexName = "FLAT" | "HNSW" | "IVF_FLAT" | "IVF_SQ8" | "IVF_PQ" | "SCANN";
export type ConsistencyName = "Strong" | "Session" | "Bounded" | "Eventually";

export interface Hit {
  id: string;
  score: number;
  metadata?: Record<string, unknown>;
  vector?: number[];
}

/** One item to ingest: image bytes or a precomputed vector, with optional metadata. */
export interface IngestItem {
  id: string;
  image?: Uint8Array;
  vector?: number[] | Float32Array;
  metadata?: Record<string, unknown>;
}

/** The server's answer for one ingested item: `code` "OK" or the item's own error. */
export interface IngestResult {
  id: string;
  code: string;
  message: string;
  ok: boolean;
}

export interface CollectionInfo {
  name: string;
  metric: string;
  indexType: string;
  /** Empty for a vectors-only collection. */
  model: string;
  dimension: number;
  rowCount: number;
  executionProvider: string;
  indexParams: Record<string, number>;
  minRecall: number;
  /** Holds vectors computed elsewhere: no images, no image or text queries. */
  vectorsOnly: boolean;
  /** The server's model has a text tower for this collection: text queries work. */
  embedsText: boolean;
}

export interface CreateCollectionOptions {
  metric?: MetricName;
  indexType?: IndexName;
  /** 0: the model's; another dimension makes a vectors-only collection. */
  dimension?: number;
  /** Vectors computed elsewhere, whatever their dimension (never labelled with the server's model). */
  vectorsOnly?: boolean;
  indexParams?: Record<string, number>;
  minRecall?: number;
}

export interface SearchOptions {
  k?: number;
  collection?: string;
  /** A Milvus boolean expression, e.g. `metadata["label"] == "cat"`. */
  filter?: string;
  includeMetadata?: boolean;
  includeVectors?: boolean;
  reverse?: boolean;
  offset?: number;
  restrictIds?: string[];
  consistency?: ConsistencyName;
  minRecall?: number;
}

export interface ClientSettings {
  /** The collection used when a call names none; empty: the server's default. */
  collection?: string;
  /** Sent as `authorization: Bearer <token>`. */
  token?: string;
  /** Channel credentials, e.g. `credentials.createSsl(ca)`; default: plaintext. */
  credentials?: ChannelCredentials;
  /** Deadline of each unary call in milliseconds (streams have none). */
  timeoutMs?: number;
  channelOptions?: Partial<ClientOptions>;
}

const METRICS: Record<MetricName, Metric> = { cosine: Metric.METRIC_COSINE, ip: Metric.METRIC_IP, l2: Metric.METRIC_L2 };
const CONSISTENCY: Record<ConsistencyName, Consistency> = {
  Strong: Consistency.CONSISTENCY_STRONG,
  Session: Consistency.CONSISTENCY_SESSION,
  Bounded: Consistency.CONSISTENCY_BOUNDED,
  Eventually: Consistency.CONSISTENCY_EVENTUALLY,
};

function callError(e: unknown): Error {
  const err = e as Partial<ServiceError>;
  if (typeof err.code === "number") return new LookalikeError(status[err.code] ?? String(err.code), err.details ?? "");
  return e instanceof Error ? e : new Error(String(e));
}

function values(vector: number[] | Float32Array): number[] {
  return Array.from(vector);
}

function wireQuery(query: Query): WireQuery {
  if (Array.isArray(query) || query instanceof Float32Array) return { vector: { values: values(query) } };
  if (query instanceof Uint8Array) return { image: Buffer.from(query) };
  if ("id" in query) return { id: query.id };
  if ("ids" in query) return { ids: { ids: query.ids } };
  if ("vectors" in query) return { vectors: { vectors: query.vectors.map((v) => ({ values: values(v) })) } };
  return { text: query.text };
}

function fromWireCollection(info: WireCollectionInfo): CollectionInfo {
  return {
    name: info.name,
    metric: metricToJSON(info.metric).replace(/^METRIC_/, "").toLowerCase(),
    indexType: indexTypeToJSON(info.indexType).replace(/^INDEX_TYPE_/, ""),
    model: info.model,
    dimension: info.dimension,
    rowCount: Number(info.rowCount),
    executionProvider: info.executionProvider,
    indexParams: Object.fromEntries(Object.entries(info.indexParams).map(([k, v]) => [k, Number(v)])),
    minRecall: info.minRecall,
    vectorsOnly: info.vectorsOnly,
    embedsText: info.embedsText,
  };
}

function fromWireHit(hit: WireHit, options: SearchOptions): Hit {
  const out: Hit = { id: hit.id, score: hit.score };
  if (options.includeMetadata) out.metadata = hit.metadata ?? {};
  if (options.includeVectors) out.vector = hit.vector?.values ?? [];
  return out;
}

/** One item as its requests: one, or several chunks for an image over CHUNK_BYTES. */
function ingestRequests(item: IngestItem, collection: string): IngestRequest[] {
  const base = { collection, id: item.id, metadata: item.metadata };
  if (item.vector !== undefined) return [{ ...base, vector: { values: values(item.vector) } }];
  const image = Buffer.from(item.image ?? new Uint8Array());
  if (image.length <= CHUNK_BYTES) return [{ ...base, image }];
  const requests: IngestRequest[] = [];
  for (let start = 0; start < image.length; start += CHUNK_BYTES) {
    requests.push({
      collection,
      id: item.id,
      metadata: start === 0 ? item.metadata : undefined,
      chunk: { data: image.subarray(start, start + CHUNK_BYTES), last: start + CHUNK_BYTES >= image.length },
    });
  }
  return requests;
}

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: { deadline: Date },
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/** Talks to one lookalike server; close it when done. */
export class LookalikeClient {
  readonly collection: string;
  private readonly collections: CollectionsClient;
  private readonly images: ImagesClient;
  private readonly metadata: Metadata;
  private readonly timeoutMs: number;

  constructor(
    readonly address: string = DEFAULT_SERVER,
    settings: ClientSettings = {},
  ) {
    this.collection = settings.collection ?? "";
    this.timeoutMs = settings.timeoutMs ?? 60_000;
    this.metadata = new Metadata();
    if (settings.token) this.metadata.set("authorization", `Bearer ${settings.token}`);
    const creds = settings.credentials ?? grpcCredentials.createInsecure();
    const options: Partial<ClientOptions> = {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
      ...settings.channelOptions,
    };
    this.collections = new CollectionsClient(address, creds, options);
    // The second stub shares the first one's channel.
    this.images = new ImagesClient(address, creds, { ...options, channelOverride: this.collections.getChannel() });
  }

  close(): void {
    this.collections.close();
  }

  /** Resolves once the channel is connected (the server answers), or rejects after timeoutMs. */
  waitForReady(timeoutMs = 60_000): Promise<void> {
    return new Promise((resolve, reject) =>
      this.collections.waitForReady(Date.now() + timeoutMs, (e) => (e ? reject(e) : resolve())),
    );
  }

  private unary<Req, Res>(method: Unary<Req, Res>, stub: object, request: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(stub, request, this.metadata, { deadline: new Date(Date.now() + this.timeoutMs) }, (e, reply) =>
        e ? reject(callError(e)) : resolve(reply),
      );
    });
  }

  // Collections

  async createCollection(name: string, options: CreateCollectionOptions = {}): Promise<CollectionInfo> {
    const reply = await this.unary(this.collections.createCollection, this.collections, {
      name,
      metric: options.metric ? METRICS[options.metric] : Metric.METRIC_UNSPECIFIED,
      indexType: options.indexType
        ? IndexType[`INDEX_TYPE_${options.indexType}` as keyof typeof IndexType]
        : IndexType.INDEX_TYPE_UNSPECIFIED,
      model: "",
      indexParams: options.indexParams ?? {},
      minRecall: options.minRecall ?? 0,
      dimension: options.dimension ?? 0,
      vectorsOnly: options.vectorsOnly ?? false,
    });
    return fromWireCollection(reply);
  }

  async listCollections(): Promise<CollectionInfo[]> {
    const reply = await this.unary(this.collections.listCollections, this.collections, {});
    return reply.collections.map(fromWireCollection);
  }

  async describeCollection(name = this.collection): Promise<CollectionInfo> {
    return fromWireCollection(await this.unary(this.collections.describeCollection, this.collections, { name }));
  }

  async dropCollection(name: string): Promise<void> {
    await this.unary(this.collections.dropCollection, this.collections, { name });
  }

  // Ingest

  /**
   * Streams items to the server and yields one result per item once it is stored (or with the item's own
   * error: a bad item never ends the stream). Items are written as the stream drains, so a lazy
   * (async) iterable over a huge folder is never held in memory.
   */
  async *ingest(
    items: Iterable<IngestItem> | AsyncIterable<IngestItem>,
    collection = this.collection,
  ): AsyncGenerator<IngestResult> {
    const call = this.images.ingest(this.metadata);
    let sourceError: unknown;
    const writer = (async () => {
      try {
        for await (const item of items) {
          for (const request of ingestRequests(item, collection)) {
            if (!call.write(request)) await once(call, "drain");
          }
        }
        call.end();
      } catch (e) {
        sourceError = e;
        call.cancel();
      }
    })();
    try {
      for await (const reply of call) {
        const code = statusCodeToJSON(reply.code);
        yield { id: reply.id, code, message: reply.message, ok: code === "OK" };
      }
    } catch (e) {
      throw sourceError === undefined ? callError(e) : sourceError;
    } finally {
      call.cancel(); // a caller that stops early ends the stream; a no-op once it is done
      await writer;
    }
    if (sourceError !== undefined) throw sourceError;
  }

  // Embed

  /** Embeddings of images (bytes), one per image; rejects on the first image the server cannot embed. */
  async embed(images: Uint8Array[]): Promise<number[][]> {
    const items = images.map((image, i) => ({ id: String(i), image: Buffer.from(image) }));
    const reply = await this.unary(this.images.embed, this.images, { items, texts: [] });
    return reply.results.map((result) => {
      const code = statusCodeToJSON(result.code);
      if (code !== "OK") throw new LookalikeError(code, result.message);
      return result.vector?.values ?? [];
    });
  }

  // Search

  /** One ranked list of hits per query, in one call. */
  async searchMany(queries: Query[], options: SearchOptions = {}): Promise<Hit[][]> {
    const reply = await this.unary(this.images.search, this.images, {
      collection: options.collection ?? this.collection,
      queries: queries.map(wireQuery),
      k: options.k ?? 10,
      filter: options.filter ?? "",
      includeMetadata: options.includeMetadata ?? false,
      includeVectors: options.includeVectors ?? false,
      requestId: "",
      reverse: options.reverse ?? false,
      offset: options.offset ?? 0,
      restrictIds: options.restrictIds ?? [],
      consistency: options.consistency ? CONSISTENCY[options.consistency] : Consistency.CONSISTENCY_UNSPECIFIED,
      minRecall: options.minRecall ?? 0,
    });
    return reply.results.map((result) => result.hits.map((hit) => fromWireHit(hit, options)));
  }

  /** The k nearest stored rows to one query. */
  async search(query: Query, options: SearchOptions = {}): Promise<Hit[]> {
    return (await this.searchMany([query], options))[0];
  }

  // Rows

  /** Stored rows by id; ids not stored are absent from the map. */
  async get(
    ids: string[],
    options: { collection?: string; vectors?: boolean; metadata?: boolean } = {},
  ): Promise<Map<string, { vector?: number[]; metadata?: Record<string, unknown> }>> {
    const vectors = options.vectors ?? true;
    const metadata = options.metadata ?? true;
    const reply = await this.unary(this.images.get, this.images, {
      collection: options.collection ?? this.collection,
      ids,
      includeVectors: vectors,
      includeMetadata: metadata,
    });
    return new Map(
      reply.items.map((item) => [
        item.id,
        {
          ...(vectors ? { vector: item.vector?.values ?? [] } : {}),
          ...(metadata ? { metadata: item.metadata ?? {} } : {}),
        },
      ]),
    );
  }

  /** Deletes rows by id; returns how many were stored. */
  async delete(ids: string[], collection = this.collection): Promise<number> {
    const reply = await this.unary(this.images.delete, this.images, { collection, ids });
    return Number(reply.deletedCount);
  }
}
