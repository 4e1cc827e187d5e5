// Runs against a live `lookalike serve` at $LOOKALIKE_SERVER, which the harness starts (make clients-test):
// a 4-d vectors-only collection of its own, and one image search against the model's default collection.
package lookalike_test

import (
	"context"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "lookalike/gen/lookalike/v1"

	"lookalike"
)

const collection = "clients_go"

func ids(hits []lookalike.Hit) []string {
	out := []string{}
	for _, hit := range hits {
		out = append(out, hit.ID)
	}
	return out
}

func TestAgainstALiveServer(t *testing.T) {
	server := os.Getenv("LOOKALIKE_SERVER")
	if server == "" {
		t.Fatal("set LOOKALIKE_SERVER=HOST:PORT of a running `lookalike serve` (make clients-test does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := lookalike.Dial(server, grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	info, err := client.CreateCollection(ctx, collection, pb.Metric_METRIC_COSINE, pb.IndexType_INDEX_TYPE_FLAT, 4)
	if err != nil {
		t.Fatal(err)
	}
	if info.Dimension != 4 || info.Model != "" {
		t.Errorf("created %v, want a 4-d vectors-only collection", info)
	}
	dropped := false
	defer func() {
		if !dropped {
			_ = client.DropCollection(context.Background(), collection)
		}
	}()

	t.Run("ingest with a per-item error", func(t *testing.T) {
		results, err := client.Ingest(ctx, []lookalike.IngestItem{
			{ID: "a", Vector: []float32{1, 0, 0, 0}, Metadata: map[string]interface{}{"label": "x", "n": 1}},
			{ID: "b", Vector: []float32{0, 1, 0, 0}, Metadata: map[string]interface{}{"label": "y"}},
			{ID: "short", Vector: []float32{1, 2, 3}},
			{ID: "c", Vector: []float32{0.9, 0.1, 0, 0}, Metadata: map[string]interface{}{"label": "x"}},
		}, collection, nil)
		if err != nil {
			t.Fatal(err)
		}
		var codes []string
		for _, r := range results {
			codes = append(codes, r.ID+":"+r.Code)
		}
		if want := []string{"a:OK", "b:OK", "short:INVALID_ARGUMENT", "c:OK"}; !reflect.DeepEqual(codes, want) {
			t.Fatalf("results %v, want %v", codes, want)
		}
		if !strings.Contains(results[2].Message, "3 dimensions") {
			t.Errorf("message %q does not say the dimension", results[2].Message)
		}
		described, err := client.DescribeCollection(ctx, collection)
		if err != nil || described.RowCount != 3 {
			t.Errorf("described %v (%v), want 3 rows", described, err)
		}
	})

	t.Run("search by vector and by id with a filter", func(t *testing.T) {
		hits, err := client.Search(ctx, lookalike.ByVector([]float32{1, 0, 0, 0}),
			lookalike.SearchOptions{K: 2, Collection: collection, IncludeMetadata: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(hits); !reflect.DeepEqual(got, []string{"a", "c"}) {
			t.Fatalf("hits %v, want [a c]", got)
		}
		if math.Abs(float64(hits[0].Score)-1) > 1e-4 {
			t.Errorf("score %v, want 1", hits[0].Score)
		}
		if want := map[string]interface{}{"label": "x", "n": 1.0}; !reflect.DeepEqual(hits[0].Metadata, want) {
			t.Errorf("metadata %v, want %v", hits[0].Metadata, want)
		}
		filtered, err := client.Search(ctx, lookalike.ByID("a"),
			lookalike.SearchOptions{K: 10, Collection: collection, Filter: `metadata["label"] == "y"`})
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(filtered); !reflect.DeepEqual(got, []string{"b"}) {
			t.Errorf("filtered hits %v, want [b]", got)
		}
	})

	t.Run("get and delete", func(t *testing.T) {
		rows, err := client.Get(ctx, []string{"a", "missing"}, collection)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || len(rows["a"].Vector) != 4 || rows["a"].Metadata["label"] != "x" {
			t.Errorf("rows %v, want a alone with its vector and metadata", rows)
		}
		deleted, err := client.Delete(ctx, []string{"a", "missing"}, collection)
		if err != nil || deleted != 1 {
			t.Errorf("deleted %d (%v), want 1", deleted, err)
		}
		if rows, err := client.Get(ctx, []string{"a"}, collection); err != nil || len(rows) != 0 {
			t.Errorf("after delete: %v (%v)", rows, err)
		}
	})

	t.Run("an unknown collection is NOT_FOUND", func(t *testing.T) {
		_, err := client.Search(ctx, lookalike.ByVector([]float32{1, 0, 0, 0}),
			lookalike.SearchOptions{K: 1, Collection: "no_such_collection"})
		if !lookalike.IsCode(err, "NOT_FOUND") || !strings.Contains(err.Error(), "no_such_collection") {
			t.Errorf("error %v, want NOT_FOUND naming the collection", err)
		}
	})

	t.Run("image search in the default collection", func(t *testing.T) {
		image := os.Getenv("LOOKALIKE_TEST_IMAGE")
		if image == "" {
			t.Skip("LOOKALIKE_TEST_IMAGE not set")
		}
		photo, err := os.ReadFile(image)
		if err != nil {
			t.Fatal(err)
		}
		hits, err := client.Search(ctx, lookalike.ByImage(photo), lookalike.SearchOptions{K: 3})
		if err != nil {
			t.Fatal(err)
		}
		if want := os.Getenv("LOOKALIKE_TEST_TOP3"); len(hits) != 3 || (want != "" && strings.Join(ids(hits), ",") != want) {
			t.Errorf("top 3 %v, want %s", ids(hits), want)
		}
	})

	if err := client.DropCollection(ctx, collection); err != nil {
		t.Fatal(err)
	}
	dropped = true
	if _, err := client.DescribeCollection(ctx, collection); !lookalike.IsCode(err, "NOT_FOUND") {
		t.Errorf("describe after drop: %v, want NOT_FOUND", err)
	}
}
