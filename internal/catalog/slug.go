package catalog

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// slugChars reports whether s (3–63 bytes) is ^[a-z0-9][a-z0-9-]*[a-z0-9]$,
// checked by hand: the edge checks a slug on every request.
func slugChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// ReservedSlugs are names no tenant may take, because they name parts of the
// platform in host names (api.example.com) or invite confusion. The control
// database refuses the same list (table reserved_slugs); a test keeps the
// two equal.
var ReservedSlugs = []string{
	"abuse", "account", "accounts", "admin", "administrator", "api",
	"app", "apps", "assets", "auth", "billing", "blog", "cdn",
	"console", "control", "dashboard", "dev", "docs", "edge",
	"ftp", "graphql", "health", "help", "hostmaster", "imap",
	"internal", "localhost", "login", "logout", "mail", "metrics",
	"null", "oauth", "plinth", "pop", "postmaster", "root",
	"security", "signup", "smtp", "sso", "static", "status",
	"support", "system", "undefined", "webmail", "webmaster", "www",
}

// ValidateSlug checks that s can name a tenant: a DNS label of 3 to 63
// lower-case letters, digits and inner hyphens, not an IDN-style label
// ("xn--…", or any "??--" prefix), and not reserved.
func ValidateSlug(s string) error {
	switch {
	case len(s) < 3 || len(s) > 63:
		return Invalid("invalid_slug", "slug %q must be 3 to 63 characters long", truncate(s, 70))
	case !slugChars(s):
		return Invalid("invalid_slug",
			"slug %q must be lower-case letters, digits and hyphens, starting and ending with a letter or digit", s)
	case strings.HasPrefix(s[2:], "--"):
		return Invalid("invalid_slug", "slug %q must not have hyphens in 3rd and 4th position (IDN-style labels are refused)", s)
	case slices.Contains(ReservedSlugs, s):
		return Invalid("reserved_slug", "slug %q is reserved", s)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return Truncate(s, n) + "…"
}

// Truncate shortens s to at most n bytes without splitting a UTF-8
// character (Postgres refuses text that is not valid UTF-8).
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
