// Command bookmarks is the smallest product service on the SDK: each
// tenant's bookmarks in that tenant's own database. The product engineer's
// guide (docs/product-engineer-guide.md) builds and runs it.
package main

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/sdk"
)

type bookmark struct {
	ID  int64  `json:"id"`
	URL string `json:"url"`
}

func main() {
	sdk.Run(func(*sdk.App) (http.Handler, error) {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /bookmarks", list)
		mux.HandleFunc("POST /bookmarks", add)
		return mux, nil
	})
}

func list(w http.ResponseWriter, r *http.Request) {
	db, err := sdk.DB(r.Context()) // this request's tenant's database, never another's
	if err != nil {
		sdk.WriteError(w, r, err)
		return
	}
	rows, err := db.Query(r.Context(), `SELECT id, url FROM bookmarks ORDER BY id`)
	if err != nil {
		sdk.WriteError(w, r, err)
		return
	}
	bs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[bookmark])
	if err != nil {
		sdk.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": append([]bookmark{}, bs...)})
}

func add(w http.ResponseWriter, r *http.Request) {
	var in struct{ URL string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&in); err != nil ||
		!(strings.HasPrefix(in.URL, "http://") || strings.HasPrefix(in.URL, "https://")) || len(in.URL) > 2000 {
		sdk.WriteError(w, r, sdk.BadRequest(`send {"url": "https://…"}`))
		return
	}
	db, err := sdk.DB(r.Context())
	if err != nil {
		sdk.WriteError(w, r, err)
		return
	}
	b := bookmark{URL: in.URL}
	if err := db.QueryRow(r.Context(), `INSERT INTO bookmarks (url) VALUES ($1) RETURNING id`, in.URL).Scan(&b.ID); err != nil {
		sdk.WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, b)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
