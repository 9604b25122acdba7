package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/problem"
)

// Problem is the API's error document (RFC 9457).
type Problem = problem.Problem

// httpError is an error a handler returns to answer with a given status and
// code; what it says is shown to the client.
type httpError struct {
	status int
	code   string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) error {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// kindStatus maps domain error kinds to HTTP statuses: the one place that
// does so.
var kindStatus = map[catalog.Kind]int{
	catalog.KindInvalid:     http.StatusUnprocessableEntity,
	catalog.KindNotFound:    http.StatusNotFound,
	catalog.KindConflict:    http.StatusConflict,
	catalog.KindUnavailable: http.StatusServiceUnavailable,
}

// problemFor turns any error into the problem the client sees. Errors that
// are neither domain nor HTTP errors are internal: the client gets a generic
// message and the request ID, the log gets the error.
func problemFor(err error) (p *Problem, internal bool) {
	var he *httpError
	if errors.As(err, &he) {
		return &Problem{Status: he.status, Code: he.code, Detail: he.msg}, false
	}
	if ce, ok := catalog.AsError(err); ok {
		status, ok := kindStatus[ce.Kind]
		if !ok {
			status = http.StatusInternalServerError
		}
		return &Problem{Status: status, Code: ce.Code, Detail: ce.Message}, false
	}
	return &Problem{Status: http.StatusInternalServerError, Code: "internal",
		Detail: "internal error; the server logged it with this request's ID"}, true
}

func writeProblem(w http.ResponseWriter, r *http.Request, p *Problem) {
	p.RequestID = w.Header().Get(headerRequestID)
	problem.Write(w, r, p)
}
