// Package problem writes RFC 9457 problem details: the one error shape of
// every Plinth HTTP surface (the control API, the sidecar, the in-process
// auth middleware), with a stable machine-readable code.
package problem

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// TypeBase prefixes the type URI of every problem.
const TypeBase = "https://plinth.dev/problems/"

// Problem is an RFC 9457 problem document with a stable code and the
// request's ID.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail,omitempty"`
	Instance  string `json:"instance,omitempty"`
	Code      string `json:"code"`
	RequestID string `json:"request_id,omitempty"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return fmt.Sprintf("%s (%d %s)", p.Detail, p.Status, p.Code)
	}
	return fmt.Sprintf("%s (%d %s)", p.Title, p.Status, p.Code)
}

// Write sends p, filling in its type, title and instance from its code,
// status and the request.
func Write(w http.ResponseWriter, r *http.Request, p *Problem) {
	p.Type = TypeBase + strings.ReplaceAll(p.Code, "_", "-")
	p.Title = http.StatusText(p.Status)
	p.Instance = r.URL.Path
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}
