// Package lookalike is a small Go client over the stubs generated from proto/lookalike/v1/lookalike.proto
// (package lookalikev1, import path from the proto's go_package).
package lookalike

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	pb "lookalike/gen/lookalike/v1"
)

// ChunkBytes: images larger than this go as several chunk messages of the same id; the server joins them.
const ChunkBytes = 4 * 1024 * 1024

// Error is a failed call: Code is the canonical status name (e.g. "NOT_FOUND", as per-item results name
// theirs), Status the gRPC code, Details the server's message.
type Error struct {
	Code    string
	Status  codes.Code
	Details string
}

func (e *Error) Error() string { return e.Code + ": " + e.Details }

var codeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func callError(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		name := s.Code().String()
		if int(s.Code()) < len(codeNames) {
			name = codeNames[s.Code()]
		}
		return &Error{Code: name, Status: s.Code(), Details: s.Message()}
	}
	return err
}

// IsCode says whether err is a lookalike Error with this status name.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Hit is one search result.
type Hit struct {
	ID       string
	Score    float32
	Metadata map[string]interface{}
	Vector   []float32
}

// IngestItem is image bytes or a precomputed vector (set one), with optional metadata.
type IngestItem struct {
	ID       string
	Image    []byte
	Vector   []float32
	Metadata map[string]interface{}
}

// IngestResult is the server's answer for one item: Code "OK" or the item's own error.
type IngestResult struct {
	ID      string
	Code    string
	Message string
}

// OK says whether the item was stored.
func (r IngestResult) OK() bool { return r.Code == "OK" }

// SearchOptions are a search's settings; the zero value means k=10 in the client's collection.
type SearchOptions struct {
	K               int32
	Collection      string
	Filter          string // a Milvus boolean expression, e.g. metadata["label"] == "cat"
	IncludeMetadata bool
	IncludeVectors  bool
}

// Row is one stored row.
type Row struct {
	Vector   []float32
	Metadata map[string]interface{}
}

// ByVector, ByImage and ByID are queries.
func ByVector(v []float32) *pb.Query {
	return &pb.Query{By: &pb.Query_Vector{Vector: &pb.Vector{Values: v}}}
}
func ByImage(b []byte) *pb.Query { return &pb.Query{By: &pb.Query_Image{Image: b}} }
func ByID(id string) *pb.Query   { return &pb.Query{By: &pb.Query_Id{Id: id}} }

// Client talks to one lookalike server over a grpc.ClientConn it owns.
type Client struct {
	Conn        *grpc.ClientConn
	Collections pb.CollectionsClient
	Images      pb.ImagesClient
	// The collection used when a call names none; empty: the server's default.
	Collection string
	// Deadline of each unary call (streams have none).
	Timeout time.Duration
}

// Dial connects to address; pass grpc.WithInsecure() for plaintext or grpc.WithTransportCredentials(...).
func Dial(address string, options ...grpc.DialOption) (*Client, error) {
	options = append([]grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20))}, options...)
	conn, err := grpc.Dial(address, options...)
	if err != nil {
		return nil, err
	}
	return &Client{Conn: conn, Collections: pb.NewCollectionsClient(conn), Images: pb.NewImagesClient(conn),
		Timeout: time.Minute}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

func (c *Client) or(collection string) string {
	if collection == "" {
		return c.Collection
	}
	return collection
}

func (c *Client) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.Timeout)
}

// CreateCollection creates a collection; dimension 0 is the model's, another makes a vectors-only one.
func (c *Client) CreateCollection(ctx context.Context, name string, metric pb.Metric, index pb.IndexType,
	dimension uint32) (*pb.CollectionInfo, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	info, err := c.Collections.CreateCollection(ctx, &pb.CreateCollectionRequest{
		Name: name, Metric: metric, IndexType: index, Dimension: dimension})
	return info, callError(err)
}

// DescribeCollection says a collection's row count, dimension, metric, index and model.
func (c *Client) DescribeCollection(ctx context.Context, name string) (*pb.CollectionInfo, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	info, err := c.Collections.DescribeCollection(ctx, &pb.DescribeCollectionRequest{Name: c.or(name)})
	return info, callError(err)
}

// ListCollections lists every collection.
func (c *Client) ListCollections(ctx context.Context) ([]*pb.CollectionInfo, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	reply, err := c.Collections.ListCollections(ctx, &pb.ListCollectionsRequest{})
	if err != nil {
		return nil, callError(err)
	}
	return reply.Collections, nil
}

// DropCollection drops a collection and its rows.
func (c *Client) DropCollection(ctx context.Context, name string) error {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	_, err := c.Collections.DropCollection(ctx, &pb.DropCollectionRequest{Name: name})
	return callError(err)
}

func ingestRequests(item IngestItem, collection string) ([]*pb.IngestRequest, error) {
	var metadata *structpb.Struct
	if len(item.Metadata) > 0 {
		var err error
		if metadata, err = structpb.NewStruct(item.Metadata); err != nil {
			return nil, fmt.Errorf("item %q: metadata: %w", item.ID, err)
		}
	}
	first := &pb.IngestRequest{Collection: collection, Id: item.ID, Metadata: metadata}
	if item.Vector != nil {
		first.Content = &pb.IngestRequest_Vector{Vector: &pb.Vector{Values: item.Vector}}
		return []*pb.IngestRequest{first}, nil
	}
	if len(item.Image) <= ChunkBytes {
		first.Content = &pb.IngestRequest_Image{Image: item.Image}
		return []*pb.IngestRequest{first}, nil
	}
	var requests []*pb.IngestRequest
	for start := 0; start < len(item.Image); start += ChunkBytes {
		end := start + ChunkBytes
		if end > len(item.Image) {
			end = len(item.Image)
		}
		request := &pb.IngestRequest{Collection: collection, Id: item.ID}
		if start == 0 {
			request = first
		}
		request.Content = &pb.IngestRequest_Chunk{Chunk: &pb.ImageChunk{Data: item.Image[start:end], Last: end == len(item.Image)}}
		requests = append(requests, request)
	}
	return requests, nil
}

// Ingest streams the items and calls onResult (if not nil) with each item's result as the server stores
// it; a bad item is that item's error and the stream goes on. Returns every result in order.
func (c *Client) Ingest(ctx context.Context, items []IngestItem, collection string,
	onResult func(IngestResult)) ([]IngestResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Images.Ingest(ctx)
	if err != nil {
		return nil, callError(err)
	}
	sent := make(chan error, 1)
	go func() {
		for _, item := range items {
			requests, err := ingestRequests(item, c.or(collection))
			if err != nil {
				sent <- err
				cancel()
				return
			}
			for _, request := range requests {
				if err := stream.Send(request); err != nil {
					sent <- nil // the stream broke: Recv says why
					return
				}
			}
		}
		sent <- stream.CloseSend()
	}()
	var results []IngestResult
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			if sendErr := <-sent; sendErr != nil {
				return results, sendErr
			}
			return results, callError(err)
		}
		result := IngestResult{ID: reply.Id, Code: reply.Code.String(), Message: reply.Message}
		results = append(results, result)
		if onResult != nil {
			onResult(result)
		}
	}
	return results, <-sent
}

// SearchMany answers a batch of queries in one call: one ranked list of hits per query.
func (c *Client) SearchMany(ctx context.Context, queries []*pb.Query, options SearchOptions) ([][]Hit, error) {
	if options.K == 0 {
		options.K = 10
	}
	ctx, cancel := c.unary(ctx)
	defer cancel()
	reply, err := c.Images.Search(ctx, &pb.SearchRequest{
		Collection: c.or(options.Collection), Queries: queries, K: options.K, Filter: options.Filter,
		IncludeMetadata: options.IncludeMetadata, IncludeVectors: options.IncludeVectors})
	if err != nil {
		return nil, callError(err)
	}
	results := make([][]Hit, len(reply.Results))
	for i, result := range reply.Results {
		for _, hit := range result.Hits {
			results[i] = append(results[i], Hit{ID: hit.Id, Score: hit.Score, Metadata: hit.Metadata.AsMap(),
				Vector: hit.Vector.GetValues()})
		}
	}
	return results, nil
}

// Search answers one query.
func (c *Client) Search(ctx context.Context, query *pb.Query, options SearchOptions) ([]Hit, error) {
	results, err := c.SearchMany(ctx, []*pb.Query{query}, options)
	if err != nil {
		return nil, err
	}
	return results[0], nil
}

// Get reads stored rows by id; ids not stored are absent from the map.
func (c *Client) Get(ctx context.Context, ids []string, collection string) (map[string]Row, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	reply, err := c.Images.Get(ctx, &pb.GetRequest{Collection: c.or(collection), Ids: ids, IncludeVectors: true,
		IncludeMetadata: true})
	if err != nil {
		return nil, callError(err)
	}
	rows := make(map[string]Row, len(reply.Items))
	for _, item := range reply.Items {
		rows[item.Id] = Row{Vector: item.Vector.GetValues(), Metadata: item.Metadata.AsMap()}
	}
	return rows, nil
}

// Delete deletes rows by id and returns how many were stored.
func (c *Client) Delete(ctx context.Context, ids []string, collection string) (uint64, error) {
	ctx, cancel := c.unary(ctx)
	defer cancel()
	reply, err := c.Images.Delete(ctx, &pb.DeleteRequest{Collection: c.or(collection), Ids: ids})
	if err != nil {
		return 0, callError(err)
	}
	return reply.DeletedCount, nil
}
