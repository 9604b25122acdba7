// Package ari parses and formats ARIs, Plinth's global resource
// identifiers: ari:cloud:<product>:<tenant-id>:<type>/<id>, for example
// ari:cloud:tracker:01a209cf-ceac-7875-8189-ba2f30d64a83:issue/42.
//
// Parsing is strict and canonical: a string parses only if formatting the
// result gives the same string back, so two different strings never name
// the same resource.
package ari

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/uuid"
)

const prefix = "ari:cloud:"

// MaxLength bounds an ARI's length.
const MaxLength = 512

var (
	productPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{1,29}$`)
	typePattern    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,63}$`)
	idPattern      = regexp.MustCompile(`^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$`)
)

// ARI identifies one resource of one product, owned by one tenant (or by no
// tenant: Tenant is uuid.Nil for platform-wide resources).
type ARI struct {
	Product string
	Tenant  uuid.UUID
	Type    string
	ID      string
}

// ErrInvalid is wrapped by every parse and validation error.
var ErrInvalid = errors.New("invalid ARI")

// New returns a validated ARI.
func New(product string, tenant uuid.UUID, typ, id string) (ARI, error) {
	a := ARI{Product: product, Tenant: tenant, Type: typ, ID: id}
	return a, a.Validate()
}

// Validate checks every part of a.
func (a ARI) Validate() error {
	switch {
	case !productPattern.MatchString(a.Product):
		return fmt.Errorf("%w: product %q must be 2-30 lower-case letters, digits or underscores", ErrInvalid, a.Product)
	case !typePattern.MatchString(a.Type):
		return fmt.Errorf("%w: type %q must be a lower-case word of at most 64 characters", ErrInvalid, a.Type)
	case !idPattern.MatchString(a.ID) || hasDotSegment(a.ID):
		return fmt.Errorf("%w: id %q must be letters, digits, '.', '_', '~', '-' in '/'-separated segments", ErrInvalid, a.ID)
	case len(a.String()) > MaxLength:
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxLength)
	}
	return nil
}

func hasDotSegment(id string) bool {
	for _, seg := range strings.Split(id, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// String formats a.
func (a ARI) String() string {
	tenant := ""
	if a.Tenant != uuid.Nil {
		tenant = a.Tenant.String()
	}
	return prefix + a.Product + ":" + tenant + ":" + a.Type + "/" + a.ID
}

// Parse parses a canonical ARI.
func Parse(s string) (ARI, error) {
	if len(s) > MaxLength {
		return ARI{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxLength)
	}
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return ARI{}, fmt.Errorf("%w: must start with %q", ErrInvalid, prefix)
	}
	product, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return ARI{}, fmt.Errorf("%w: missing tenant", ErrInvalid)
	}
	tenant, resource, ok := strings.Cut(rest, ":")
	if !ok {
		return ARI{}, fmt.Errorf("%w: missing resource", ErrInvalid)
	}
	typ, id, ok := strings.Cut(resource, "/")
	if !ok {
		return ARI{}, fmt.Errorf("%w: resource must be <type>/<id>", ErrInvalid)
	}
	a := ARI{Product: product, Type: typ, ID: id}
	if tenant != "" {
		u, err := uuid.Parse(tenant)
		// Only the canonical form: lower case, hyphenated, no braces or urn prefix.
		if err != nil || u.String() != tenant || u == uuid.Nil {
			return ARI{}, fmt.Errorf("%w: tenant %q must be a lower-case UUID", ErrInvalid, tenant)
		}
		a.Tenant = u
	}
	if err := a.Validate(); err != nil {
		return ARI{}, err
	}
	return a, nil
}

// MarshalText implements encoding.TextMarshaler.
func (a ARI) MarshalText() ([]byte, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return []byte(a.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *ARI) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*a = p
	return nil
}
