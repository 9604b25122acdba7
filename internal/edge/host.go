package edge

import (
	"errors"
	"strings"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// ErrBadHost is returned for a Host header that names no tenant Plinth
// could serve.
var ErrBadHost = errors.New("bad host")

// maxHost bounds the Host header: a DNS name is at most 253 bytes, plus a
// port.
const maxHost = 253 + 6

// Target is who a Host header names: a tenant by slug (under the base
// domain) or a custom domain (anything else).
type Target struct {
	Slug   string
	Domain string
}

// ParseHost reads the tenant a Host header names. base is the edge's base
// domain (plinth.localhost): `<slug>.<base>` names a tenant by slug; any
// other well-formed ASCII name is a custom domain. The host is
// case-insensitive; a port and one trailing dot are dropped. Anything else
// — a bare base, nested labels under the base, IP literals, non-ASCII (IDNs
// must arrive in xn-- form), user info, empty labels — is ErrBadHost.
func ParseHost(host, base string) (Target, error) {
	if len(host) == 0 || len(host) > maxHost {
		return Target{}, ErrBadHost
	}
	if host[0] == '[' { // an IPv6 literal names no tenant
		return Target{}, ErrBadHost
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		port := host[i+1:]
		if len(port) == 0 || len(port) > 5 {
			return Target{}, ErrBadHost
		}
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return Target{}, ErrBadHost
			}
		}
		host = host[:i]
	}
	host = strings.TrimSuffix(host, ".")
	if len(host) == 0 || len(host) > 253 {
		return Target{}, ErrBadHost
	}
	var lower [253]byte
	allDigits, upper := true, false
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
			allDigits, upper = false, true
		case c >= 'a' && c <= 'z', c == '-':
			allDigits = false
		case c >= '0' && c <= '9', c == '.':
		default:
			return Target{}, ErrBadHost
		}
		lower[i] = c
	}
	if allDigits { // 127.0.0.1, 10.0.0.1: no tenant has an IP
		return Target{}, ErrBadHost
	}
	h := host // already lower case: no copy
	if upper {
		h = string(lower[:len(host)])
	}
	if slug, ok := strings.CutSuffix(h, "."+base); ok && base != "" {
		if strings.IndexByte(slug, '.') >= 0 || catalog.ValidateSlug(slug) != nil {
			return Target{}, ErrBadHost
		}
		return Target{Slug: slug}, nil
	}
	if h == base {
		return Target{}, ErrBadHost
	}
	d, err := catalog.NormalizeDomain(h)
	if err != nil {
		return Target{}, ErrBadHost
	}
	return Target{Domain: d}, nil
}

// cleanPath checks a request target's path: it must not climb out of its
// route with dot segments (also percent-encoded) or smuggle a backslash or
// an encoded slash past the route match.
func cleanPath(target string) bool {
	path := target
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if len(path) == 0 || path[0] != '/' {
		return false
	}
	for i := 0; i < len(path); i++ {
		switch path[i] {
		case '\\':
			return false
		case '%':
			if i+2 < len(path) {
				e := path[i+1 : i+3]
				if strings.EqualFold(e, "2f") || strings.EqualFold(e, "5c") {
					return false
				}
			}
		}
	}
	for seg := range strings.SplitSeq(path[1:], "/") {
		s := strings.ReplaceAll(strings.ReplaceAll(seg, "%2e", "."), "%2E", ".")
		if s == "." || s == ".." {
			return false
		}
	}
	return true
}

// matchPrefix reports whether path (a request target) falls under the
// route prefix: equal to it, or followed by / or ?.
func matchPrefix(target, prefix string) bool {
	if !strings.HasPrefix(target, prefix) {
		return false
	}
	if len(target) == len(prefix) || strings.HasSuffix(prefix, "/") {
		return true
	}
	c := target[len(prefix)]
	return c == '/' || c == '?'
}
