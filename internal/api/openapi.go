package api

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the control API's OpenAPI 3.1 document. It is written by hand
// as the API's contract; TestOpenAPIMatchesRoutes and the response checks
// in the API tests keep the handlers to it.
//
//go:embed openapi.json
var OpenAPI []byte

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(OpenAPI)
	return err
}
