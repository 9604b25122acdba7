package sdk_test

import (
	"encoding/json"
	"net/http"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/sdk"
)

// A product service: each request reads its own tenant's notes. In main,
// sdk.Run(notes) serves it with the configuration from the environment.
func Example() {
	notes := func(app *sdk.App) (http.Handler, error) {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /notes", func(w http.ResponseWriter, r *http.Request) {
			db, err := sdk.DB(r.Context()) // this request's tenant, this product: never another's
			if err != nil {
				sdk.WriteError(w, r, err)
				return
			}
			rows, err := db.Query(r.Context(), "SELECT body FROM notes ORDER BY id")
			if err != nil {
				sdk.WriteError(w, r, err)
				return
			}
			bodies, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				sdk.WriteError(w, r, err)
				return
			}
			_ = json.NewEncoder(w).Encode(bodies)
		})
		return mux, nil
	}
	_ = notes // sdk.Run(notes)
}

// Calling another service through the sidecar, on behalf of the request.
func ExampleClient() {
	handler := func(w http.ResponseWriter, r *http.Request) {
		resp, err := sdk.Client("echo").Get(r.Context(), "/hello")
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
	}
	_ = handler
}
