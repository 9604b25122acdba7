package catalog

import (
	"errors"
	"fmt"
)

// Kind classifies an Error; the API maps each kind to one HTTP status.
type Kind int

// Error kinds.
const (
	KindInvalid     Kind = iota + 1 // the request is malformed or breaks a rule
	KindNotFound                    // the named thing does not exist
	KindConflict                    // the request conflicts with current state
	KindUnavailable                 // a dependency (a shard, capacity) is not available now
)

// Error is a domain error with a stable machine-readable code (such as
// "slug_taken") and a message fit to show the caller.
type Error struct {
	Kind    Kind
	Code    string
	Message string
	Err     error // the cause, for logs; never shown to callers
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Invalid returns a KindInvalid error.
func Invalid(code, format string, args ...any) *Error {
	return &Error{Kind: KindInvalid, Code: code, Message: fmt.Sprintf(format, args...)}
}

// NotFound returns a KindNotFound error.
func NotFound(code, format string, args ...any) *Error {
	return &Error{Kind: KindNotFound, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Conflict returns a KindConflict error.
func Conflict(code, format string, args ...any) *Error {
	return &Error{Kind: KindConflict, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Unavailable returns a KindUnavailable error.
func Unavailable(code, format string, args ...any) *Error {
	return &Error{Kind: KindUnavailable, Code: code, Message: fmt.Sprintf(format, args...)}
}

// AsError returns the *Error in err's chain, if any.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// IsCode reports whether err carries a catalog Error with the given code.
func IsCode(err error, code string) bool {
	e, ok := AsError(err)
	return ok && e.Code == code
}
