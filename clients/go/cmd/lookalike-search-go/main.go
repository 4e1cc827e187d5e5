// lookalike-search-go PHOTO [-k K] [-server HOST:PORT] [-collection NAME]: the top k stored ids for a photo.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"

	"lookalike"
)

func main() {
	server := os.Getenv("LOOKALIKE_SERVER")
	if server == "" {
		server = "localhost:50051"
	}
	flag.StringVar(&server, "server", server, "HOST:PORT of the lookalike server")
	collection := flag.String("collection", "", "collection (default: the server's default)")
	k := flag.Int("k", 3, "results")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: lookalike-search-go [-k K] [-server HOST:PORT] [-collection NAME] PHOTO")
		os.Exit(2)
	}
	photo, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "lookalike-search-go:", err)
		os.Exit(1)
	}
	client, err := lookalike.Dial(server, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "lookalike-search-go:", err)
		os.Exit(1)
	}
	defer client.Close()
	hits, err := client.Search(context.Background(), lookalike.ByImage(photo),
		lookalike.SearchOptions{K: int32(*k), Collection: *collection})
	if err != nil {
		fmt.Fprintln(os.Stderr, "lookalike-search-go:", err)
		os.Exit(1)
	}
	for i, hit := range hits {
		fmt.Printf("%4d  %8.4f  %s\n", i+1, hit.Score, hit.ID)
	}
}
