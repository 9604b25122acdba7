// Package tracker is Plinth's reference product: a small issue tracker
// (projects, issues with ARIs, comments, assignees) with a server-rendered
// HTML UI and a JSON API, built only on the SDK. Every request works on
// its own tenant's database; nothing here names a shard, a database or
// another tenant.
package tracker

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/plinth-platform/plinth/sdk"
)

// Product is the product's name in the catalog.
const Product = "tracker"

// Migrations are the tenant-database migrations, to register with
// `plinth product register tracker --migrations examples/tracker/migrations`.
//
//go:embed migrations/*.sql
var Migrations embed.FS

// Project, Issue and Comment are what the API returns.
type Project struct {
	ID        int64     `json:"id"`
	ARI       string    `json:"ari"`
	Key       string    `json:"key"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

type Issue struct {
	ID        int64     `json:"id"`
	ARI       string    `json:"ari"`
	Project   string    `json:"project"`
	Title     string    `json:"title"`
	Body      string    `json:"body"`
	Status    string    `json:"status"`
	Assignee  string    `json:"assignee"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

type Comment struct {
	ID        int64     `json:"id"`
	ARI       string    `json:"ari"`
	Author    string    `json:"author"`
	Body      string    `json:"body"`
	CreatedAt time.Time `json:"created_at"`
}

// Handler is the tracker's HTTP handler; serve it behind sdk.App.Handler
// (sdk.Run does).
func Handler(*sdk.App) (http.Handler, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/projects", api(listProjects))
	mux.HandleFunc("POST /api/projects", api(createProject))
	mux.HandleFunc("GET /api/projects/{key}/issues", api(listIssues))
	mux.HandleFunc("POST /api/projects/{key}/issues", api(createIssue))
	mux.HandleFunc("GET /api/issues/{id}", api(getIssue))
	mux.HandleFunc("PATCH /api/issues/{id}", api(updateIssue))
	mux.HandleFunc("GET /api/issues/{id}/comments", api(listComments))
	mux.HandleFunc("POST /api/issues/{id}/comments", api(addComment))
	mux.HandleFunc("GET /api/resolve", api(resolve))
	mux.HandleFunc("GET /{$}", page(home))
	mux.HandleFunc("POST /projects", form(postProject))
	mux.HandleFunc("GET /p/{key}", page(projectPage))
	mux.HandleFunc("POST /p/{key}/issues", form(postIssue))
	mux.HandleFunc("GET /i/{id}", page(issuePage))
	mux.HandleFunc("POST /i/{id}/comments", form(postComment))
	mux.HandleFunc("POST /i/{id}/status", form(postStatus))
	return mux, nil
}

// api runs a JSON handler: its result is the response body.
func api(h func(r *http.Request, db *sdk.TenantDB) (int, any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		db, err := sdk.DB(r.Context())
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		status, v, err := h(r, db)
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
}

// decode reads a JSON body of at most 64 KB with no unknown fields.
func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return sdk.BadRequest("the body must be application/json")
		}
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return sdk.BadRequest("the body is not valid JSON for this request: " + err.Error())
	}
	return nil
}

var (
	keyPattern = regexp.MustCompile(`^[A-Z][A-Z0-9]{1,9}$`)
	statuses   = map[string]bool{"open": true, "in_progress": true, "done": true}
)

func checkLen(what, s string, lo, hi int) error {
	if n := len([]rune(s)); n < lo || n > hi {
		return sdk.BadRequest(fmt.Sprintf("%s must be %d to %d characters", what, lo, hi))
	}
	return nil
}

func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, pgx.ErrNoRows // an ID that is not one names nothing
	}
	return id, nil
}

func ari(ctx context.Context, typ string, id int64) string {
	a, err := sdk.NewARI(ctx, Product, typ, strconv.FormatInt(id, 10))
	if err != nil {
		return ""
	}
	return a.String()
}

func listProjects(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	ps, err := projects(r.Context(), db)
	return http.StatusOK, map[string]any{"items": ps}, err
}

func projects(ctx context.Context, db *sdk.TenantDB) ([]Project, error) {
	rows, err := db.Query(ctx, `SELECT id, key, name, created_at FROM projects ORDER BY key`)
	if err != nil {
		return nil, err
	}
	ps, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Project, error) {
		var p Project
		err := row.Scan(&p.ID, &p.Key, &p.Name, &p.CreatedAt)
		return p, err
	})
	for i := range ps {
		ps[i].ARI = ari(ctx, "project", ps[i].ID)
	}
	return ps, err
}

type newProject struct {
	Key  string `json:"key"`
	Name string `json:"name"`
}

func (p newProject) insert(ctx context.Context, db *sdk.TenantDB) (Project, error) {
	if !keyPattern.MatchString(p.Key) {
		return Project{}, sdk.BadRequest("key must be 2 to 10 capital letters and digits, starting with a letter")
	}
	if err := checkLen("name", p.Name, 1, 100); err != nil {
		return Project{}, err
	}
	out := Project{Key: p.Key, Name: p.Name}
	err := db.QueryRow(ctx, `INSERT INTO projects (key, name) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING id, created_at`,
		p.Key, p.Name).Scan(&out.ID, &out.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Project{}, sdk.BadRequest("a project with key " + p.Key + " exists")
	}
	out.ARI = ari(ctx, "project", out.ID)
	return out, err
}

func createProject(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	var p newProject
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	out, err := p.insert(r.Context(), db)
	return http.StatusCreated, out, err
}

const issueColumns = `i.id, p.key, i.title, i.body, i.status, i.assignee, i.created_at, i.updated_at`

func scanIssue(ctx context.Context, row pgx.Row) (Issue, error) {
	var i Issue
	err := row.Scan(&i.ID, &i.Project, &i.Title, &i.Body, &i.Status, &i.Assignee, &i.CreatedAt, &i.UpdatedAt)
	i.ARI = ari(ctx, "issue", i.ID)
	return i, err
}

func issues(ctx context.Context, db *sdk.TenantDB, key string) ([]Issue, error) {
	rows, err := db.Query(ctx, `SELECT `+issueColumns+` FROM issues i JOIN projects p ON p.id = i.project_id
		WHERE p.key = $1 ORDER BY i.id DESC LIMIT 500`, key)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Issue, error) { return scanIssue(ctx, row) })
}

func listIssues(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	is, err := issues(r.Context(), db, r.PathValue("key"))
	return http.StatusOK, map[string]any{"items": is}, err
}

type newIssue struct {
	Title    string `json:"title"`
	Body     string `json:"body"`
	Assignee string `json:"assignee"`
}

func (n newIssue) insert(ctx context.Context, db *sdk.TenantDB, key string) (Issue, error) {
	for _, c := range []struct {
		what, s string
		lo, hi  int
	}{{"title", n.Title, 1, 200}, {"body", n.Body, 0, 10000}, {"assignee", n.Assignee, 0, 100}} {
		if err := checkLen(c.what, c.s, c.lo, c.hi); err != nil {
			return Issue{}, err
		}
	}
	return scanIssue(ctx, db.QueryRow(ctx, `
		WITH p AS (SELECT id, key FROM projects WHERE key = $1),
		     i AS (INSERT INTO issues (project_id, title, body, assignee) SELECT id, $2, $3, $4 FROM p RETURNING *)
		SELECT `+issueColumns+` FROM i JOIN p ON p.id = i.project_id`, key, n.Title, n.Body, n.Assignee))
}

func createIssue(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	var n newIssue
	if err := decode(r, &n); err != nil {
		return 0, nil, err
	}
	i, err := n.insert(r.Context(), db, r.PathValue("key"))
	return http.StatusCreated, i, err
}

func issue(ctx context.Context, db *sdk.TenantDB, id int64) (Issue, error) {
	return scanIssue(ctx, db.QueryRow(ctx, `SELECT `+issueColumns+` FROM issues i JOIN projects p ON p.id = i.project_id WHERE i.id = $1`, id))
}

func getIssue(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	i, err := issue(r.Context(), db, id)
	return http.StatusOK, i, err
}

type issueChange struct {
	Title    *string `json:"title"`
	Status   *string `json:"status"`
	Assignee *string `json:"assignee"`
}

func (c issueChange) apply(ctx context.Context, db *sdk.TenantDB, id int64) (Issue, error) {
	if c.Title != nil {
		if err := checkLen("title", *c.Title, 1, 200); err != nil {
			return Issue{}, err
		}
	}
	if c.Status != nil && !statuses[*c.Status] {
		return Issue{}, sdk.BadRequest("status must be open, in_progress or done")
	}
	if c.Assignee != nil {
		if err := checkLen("assignee", *c.Assignee, 0, 100); err != nil {
			return Issue{}, err
		}
	}
	return scanIssue(ctx, db.QueryRow(ctx, `
		WITH i AS (UPDATE issues SET title = coalesce($2, title), status = coalesce($3, status),
				assignee = coalesce($4, assignee), updated_at = now() WHERE id = $1 RETURNING *)
		SELECT `+issueColumns+` FROM i JOIN projects p ON p.id = i.project_id`, id, c.Title, c.Status, c.Assignee))
}

func updateIssue(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	var c issueChange
	if err := decode(r, &c); err != nil {
		return 0, nil, err
	}
	i, err := c.apply(r.Context(), db, id)
	return http.StatusOK, i, err
}

func comments(ctx context.Context, db *sdk.TenantDB, issue int64) ([]Comment, error) {
	rows, err := db.Query(ctx, `SELECT id, author, body, created_at FROM comments WHERE issue_id = $1 ORDER BY id`, issue)
	if err != nil {
		return nil, err
	}
	cs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Comment, error) {
		var c Comment
		err := row.Scan(&c.ID, &c.Author, &c.Body, &c.CreatedAt)
		return c, err
	})
	for i := range cs {
		cs[i].ARI = ari(ctx, "comment", cs[i].ID)
	}
	return cs, err
}

func listComments(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	if _, err := issue(r.Context(), db, id); err != nil {
		return 0, nil, err
	}
	cs, err := comments(r.Context(), db, id)
	return http.StatusOK, map[string]any{"items": cs}, err
}

type newComment struct {
	Author string `json:"author"`
	Body   string `json:"body"`
}

func (n newComment) insert(ctx context.Context, db *sdk.TenantDB, issue int64) (Comment, error) {
	if err := checkLen("body", n.Body, 1, 5000); err != nil {
		return Comment{}, err
	}
	if err := checkLen("author", n.Author, 0, 100); err != nil {
		return Comment{}, err
	}
	c := Comment{Author: n.Author, Body: n.Body}
	err := db.QueryRow(ctx, `INSERT INTO comments (issue_id, author, body) SELECT id, $2, $3 FROM issues WHERE id = $1
		RETURNING id, created_at`, issue, n.Author, n.Body).Scan(&c.ID, &c.CreatedAt)
	c.ARI = ari(ctx, "comment", c.ID)
	return c, err
}

func addComment(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, nil, err
	}
	var n newComment
	if err := decode(r, &n); err != nil {
		return 0, nil, err
	}
	c, err := n.insert(r.Context(), db, id)
	return http.StatusCreated, c, err
}

// resolve returns the issue an ARI names, if it is this tenant's: an ARI
// of another tenant names nothing here.
func resolve(r *http.Request, db *sdk.TenantDB) (int, any, error) {
	a, err := sdk.ParseARI(r.Context(), Product, r.URL.Query().Get("ari"))
	if err != nil {
		return 0, nil, err
	}
	if a.Type != "issue" {
		return 0, nil, pgx.ErrNoRows
	}
	id, err := strconv.ParseInt(a.ID, 10, 64)
	if err != nil {
		return 0, nil, pgx.ErrNoRows
	}
	i, err := issue(r.Context(), db, id)
	return http.StatusOK, i, err
}

// The HTML UI.

var pages = template.Must(template.New("").Funcs(template.FuncMap{
	"status": func(s string) string { return strings.ReplaceAll(s, "_", " ") },
}).Parse(`
{{define "head"}}<!doctype html><html><head><meta charset="utf-8"><title>{{.Title}} · Tracker</title>
<style>body{font:15px system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;width:100%}td,th{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left}
input,textarea,select{font:inherit}.muted{color:#777}</style></head>
<body><p class="muted">Tracker for <b>{{.Tenant}}</b> · <a href="/">projects</a></p>{{end}}
{{define "home"}}{{template "head" .}}<h1>Projects</h1>
<table>{{range .Projects}}<tr><td><a href="/p/{{.Key}}">{{.Key}}</a></td><td>{{.Name}}</td></tr>{{else}}<tr><td class="muted">No projects yet.</td></tr>{{end}}</table>
<h2>New project</h2><form method="post" action="/projects"><input name="key" placeholder="KEY" required pattern="[A-Z][A-Z0-9]{1,9}">
<input name="name" placeholder="Name" required maxlength="100"> <button>Create</button></form></body></html>{{end}}
{{define "project"}}{{template "head" .}}<h1>{{.Key}}</h1>
<table>{{range .Issues}}<tr><td><a href="/i/{{.ID}}">#{{.ID}}</a></td><td>{{.Title}}</td><td>{{status .Status}}</td><td>{{.Assignee}}</td></tr>{{else}}<tr><td class="muted">No issues yet.</td></tr>{{end}}</table>
<h2>New issue</h2><form method="post" action="/p/{{.Key}}/issues"><p><input name="title" placeholder="Title" required maxlength="200" size="50"></p>
<p><textarea name="body" rows="4" cols="60" maxlength="10000"></textarea></p><p><input name="assignee" placeholder="Assignee" maxlength="100"> <button>Create</button></p></form></body></html>{{end}}
{{define "issue"}}{{template "head" .}}<h1>#{{.Issue.ID}} {{.Issue.Title}}</h1>
<p class="muted">{{.Issue.Project}} · {{status .Issue.Status}} · {{with .Issue.Assignee}}{{.}}{{else}}unassigned{{end}} · <code>{{.Issue.ARI}}</code></p>
<p>{{.Issue.Body}}</p>
<form method="post" action="/i/{{.Issue.ID}}/status"><select name="status">{{$cur := .Issue.Status}}{{range .Statuses}}<option value="{{.}}"{{if eq . $cur}} selected{{end}}>{{status .}}</option>{{end}}</select> <button>Set</button></form>
<h2>Comments</h2>{{range .Comments}}<p><b>{{with .Author}}{{.}}{{else}}someone{{end}}</b> <span class="muted">{{.CreatedAt.Format "2006-01-02 15:04"}}</span><br>{{.Body}}</p>{{else}}<p class="muted">No comments.</p>{{end}}
<form method="post" action="/i/{{.Issue.ID}}/comments"><p><textarea name="body" rows="3" cols="60" required maxlength="5000"></textarea></p>
<p><input name="author" placeholder="Your name" maxlength="100"> <button>Comment</button></p></form></body></html>{{end}}
`))

type view map[string]any

// page renders a template with the request's tenant.
func page(h func(r *http.Request, db *sdk.TenantDB) (string, view, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		db, err := sdk.DB(r.Context())
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		name, v, err := h(r, db)
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		t, _ := sdk.Tenant(r.Context())
		v["Tenant"] = t.Slug
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = pages.ExecuteTemplate(w, name, v)
	}
}

// form runs a form post and redirects to where it says.
func form(h func(r *http.Request, db *sdk.TenantDB) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		db, err := sdk.DB(r.Context())
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			sdk.WriteError(w, r, sdk.BadRequest("the form could not be read"))
			return
		}
		to, err := h(r, db)
		if err != nil {
			sdk.WriteError(w, r, err)
			return
		}
		http.Redirect(w, r, to, http.StatusSeeOther)
	}
}

func home(r *http.Request, db *sdk.TenantDB) (string, view, error) {
	ps, err := projects(r.Context(), db)
	return "home", view{"Title": "Projects", "Projects": ps}, err
}

func projectPage(r *http.Request, db *sdk.TenantDB) (string, view, error) {
	key := r.PathValue("key")
	var exists bool
	if err := db.QueryRow(r.Context(), `SELECT EXISTS (SELECT 1 FROM projects WHERE key = $1)`, key).Scan(&exists); err != nil {
		return "", nil, err
	}
	if !exists {
		return "", nil, pgx.ErrNoRows
	}
	is, err := issues(r.Context(), db, key)
	return "project", view{"Title": key, "Key": key, "Issues": is}, err
}

func issuePage(r *http.Request, db *sdk.TenantDB) (string, view, error) {
	id, err := pathID(r)
	if err != nil {
		return "", nil, err
	}
	i, err := issue(r.Context(), db, id)
	if err != nil {
		return "", nil, err
	}
	cs, err := comments(r.Context(), db, id)
	return "issue", view{"Title": i.Title, "Issue": i, "Comments": cs, "Statuses": []string{"open", "in_progress", "done"}}, err
}

func postProject(r *http.Request, db *sdk.TenantDB) (string, error) {
	p, err := newProject{Key: r.PostFormValue("key"), Name: r.PostFormValue("name")}.insert(r.Context(), db)
	return "/p/" + p.Key, err
}

func postIssue(r *http.Request, db *sdk.TenantDB) (string, error) {
	i, err := newIssue{Title: r.PostFormValue("title"), Body: r.PostFormValue("body"), Assignee: r.PostFormValue("assignee")}.
		insert(r.Context(), db, r.PathValue("key"))
	return "/i/" + strconv.FormatInt(i.ID, 10), err
}

func postComment(r *http.Request, db *sdk.TenantDB) (string, error) {
	id, err := pathID(r)
	if err != nil {
		return "", err
	}
	_, err = newComment{Author: r.PostFormValue("author"), Body: r.PostFormValue("body")}.insert(r.Context(), db, id)
	return "/i/" + strconv.FormatInt(id, 10), err
}

func postStatus(r *http.Request, db *sdk.TenantDB) (string, error) {
	id, err := pathID(r)
	if err != nil {
		return "", err
	}
	st := r.PostFormValue("status")
	_, err = issueChange{Status: &st}.apply(r.Context(), db, id)
	return "/i/" + strconv.FormatInt(id, 10), err
}
