package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/plinth-platform/plinth/internal/api"
)

type openAPIDoc struct {
	Paths map[string]map[string]struct {
		Responses map[string]struct {
			Content map[string]struct {
				Schema struct {
					Ref string `json:"$ref"`
				} `json:"schema"`
			} `json:"content"`
		} `json:"responses"`
	} `json:"paths"`
}

func loadDoc(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	return doc
}

// Every route the server handles is documented, and every documented
// operation has a route.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	doc := loadDoc(t)
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(documented)
	served := api.Routes()
	sort.Strings(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("routes and openapi.json differ:\n served:     %v\n documented: %v", served, documented)
	}
}

// validator checks every response a test receives against the schema
// openapi.json gives for its path, method and status.
type validator struct {
	t        *testing.T
	next     http.RoundTripper
	compiler *jsonschema.Compiler
	doc      openAPIDoc
	patterns map[string]*regexp.Regexp

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema
	checked int
}

func newValidator(t *testing.T) *validator {
	t.Helper()
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(api.OpenAPI))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("openapi.json", raw); err != nil {
		t.Fatal(err)
	}
	v := &validator{t: t, next: http.DefaultTransport, compiler: c, doc: loadDoc(t),
		patterns: map[string]*regexp.Regexp{}, schemas: map[string]*jsonschema.Schema{}}
	for path := range v.doc.Paths {
		parts := strings.Split(path, "/")
		for i, p := range parts {
			if strings.HasPrefix(p, "{") {
				parts[i] = "[^/]+"
			} else {
				parts[i] = regexp.QuoteMeta(p)
			}
		}
		v.patterns[path] = regexp.MustCompile("^" + strings.Join(parts, "/") + "$")
	}
	return v
}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return resp, err
	}
	if err := v.check(req.Method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"), body); err != nil {
		v.t.Errorf("response does not match openapi.json: %s %s -> %d: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
	return resp, nil
}

func (v *validator) check(method, path string, status int, contentType string, body []byte) error {
	var docPath string
	for p, re := range v.patterns {
		if re.MatchString(path) && (docPath == "" || strings.Count(p, "{") < strings.Count(docPath, "{")) {
			docPath = p
		}
	}
	if docPath == "" && status != http.StatusNotFound {
		return fmt.Errorf("undocumented path") // an unrouted path must still answer with a problem
	}
	var ref string
	if docPath != "" && status != http.StatusMethodNotAllowed {
		op, ok := v.doc.Paths[docPath][strings.ToLower(method)]
		if !ok {
			return fmt.Errorf("undocumented method")
		}
		resp, ok := op.Responses[strconv.Itoa(status)]
		if !ok {
			resp, ok = op.Responses["default"]
			if !ok || status < 400 {
				return fmt.Errorf("undocumented status %d", status)
			}
		}
		for _, c := range resp.Content {
			ref = c.Schema.Ref
		}
	}
	if status >= 400 {
		if !strings.HasPrefix(contentType, "application/problem+json") {
			return fmt.Errorf("error with content type %q, want application/problem+json", contentType)
		}
		ref = "#/components/schemas/Problem"
	}
	if ref == "" {
		return nil // metrics, openapi.json
	}
	sch, err := v.schema(ref)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	v.mu.Lock()
	v.checked++
	v.mu.Unlock()
	return sch.Validate(inst)
}

func (v *validator) schema(ref string) (*jsonschema.Schema, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.schemas[ref]; ok {
		return s, nil
	}
	s, err := v.compiler.Compile("openapi.json" + ref)
	if err != nil {
		return nil, err
	}
	v.schemas[ref] = s
	return s, nil
}
