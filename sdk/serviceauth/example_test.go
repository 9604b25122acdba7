package serviceauth_test

import (
	"fmt"
	"log"
	"net/http"

	"github.com/plinth-platform/plinth/sdk/serviceauth"
)

// A service without a sidecar verifies its callers in process.
func ExampleMiddleware() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /notes", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := serviceauth.Caller(r.Context())
		tenant, ok := serviceauth.TenantFrom(r.Context())
		if !ok {
			http.Error(w, "a tenant is required", http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "notes of %s, asked by %s\n", tenant.Slug, caller)
	})
	h, err := serviceauth.Middleware(serviceauth.Config{
		Service:        "notes",
		KeyRepository:  "http://127.0.0.1:7070",
		AllowedCallers: []string{"edge"},
	}, mux)
	if err != nil {
		log.Fatal(err)
	}
	_ = http.ListenAndServe // http.ListenAndServe("127.0.0.1:8081", h)
	_ = h
}
