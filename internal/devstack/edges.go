package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/edge"
)

// EdgeListenDefault is where the first region's edge serves tenants.
const EdgeListenDefault = "127.0.0.1:8080"

// startEdges runs one edge per region: the first region's on listen, the
// others' on free ports, each recorded as its region's edge so that edges
// forward tenants homed elsewhere.
func startEdges(ctx context.Context, store *catalog.Store, st State, listen, controlURL, credential string, logger *slog.Logger) (_ []*edge.Edge, err error) {
	var edges []*edge.Edge
	defer func() {
		if err != nil {
			stopEdges(edges)
		}
	}()
	var regions []string
	seen := map[string]bool{}
	for _, s := range st.Shards {
		if !seen[s.Region] {
			seen[s.Region] = true
			regions = append(regions, s.Region)
		}
	}
	for i, region := range regions {
		addr := "127.0.0.1:0"
		if i == 0 {
			addr = listen
		}
		e, err := edge.New(edge.Config{Region: region, Listen: addr, ControlURL: controlURL, Credential: credential,
			Logger: logger, AccessLog: logger})
		if err != nil {
			return nil, err
		}
		if err := e.Start(ctx); err != nil {
			return nil, fmt.Errorf("edge of %s: %w (choose another address with --edge-listen)", region, err)
		}
		edges = append(edges, e)
		if err := store.SetRegionEdgeURL(ctx, region, "http://"+e.Addr()); err != nil {
			return nil, err
		}
	}
	return edges, nil
}

func stopEdges(edges []*edge.Edge) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, e := range edges {
		_ = e.Stop(ctx)
	}
}
