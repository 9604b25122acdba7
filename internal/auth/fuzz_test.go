package auth

import (
	"context"
	"strings"
	"testing"
	"time"
)

// parse never panics; what it accepts has an accepted algorithm, a valid
// kid, and fits the size limit.
func FuzzParse(f *testing.F) {
	key, _ := GenerateKey(ES256, "edge/k1")
	m, _ := NewMinter("edge", key, 0, nil)
	valid, _ := m.Token("notes", Tenant{ID: "t"}, false)
	for _, s := range []string{valid, "", ".", "..", "a.b.c", strings.Repeat(".", 1000), "eyJhbGciOiJub25lIn0.e30.",
		"eyJhbGciOiJFUzI1NiIsImtpZCI6ImEvYiJ9.eyJhdWQiOlsxXX0.AA"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		p, err := parse(token)
		if err != nil {
			if Code(err) == "" {
				t.Fatalf("parse(%q) error without a code: %v", token, err)
			}
			return
		}
		if len(token) > MaxTokenBytes {
			t.Fatal("accepted an oversized token")
		}
		switch p.header.Alg {
		case ES256, RS256, EdDSA:
		default:
			t.Fatalf("accepted alg %q", p.header.Alg)
		}
		if _, err := ValidateKid(p.header.Kid); err != nil {
			t.Fatalf("accepted kid %q", p.header.Kid)
		}
	})
}

// Accepted kids never escape a path: no "..", no leading "/", no empty
// segment, and they start with their issuer.
func FuzzValidateKid(f *testing.F) {
	for _, s := range []string{"edge/k1", "../x", "/a/b", "a//b", "a/b/", "a", "a/b", strings.Repeat("x/", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, kid string) {
		iss, err := ValidateKid(kid)
		if err != nil {
			return
		}
		if strings.Contains(kid, "..") || strings.HasPrefix(kid, "/") || strings.Contains(kid, "//") ||
			strings.HasSuffix(kid, "/") || len(kid) > MaxKidBytes || !strings.HasPrefix(kid, iss+"/") || iss == "" {
			t.Fatalf("accepted kid %q (issuer %q)", kid, iss)
		}
	})
}

func benchSetup(b *testing.B) (*Verifier, *Minter) {
	key, _ := GenerateKey(ES256, "edge/k1")
	m, _ := NewMinter("edge", key, time.Hour, nil)
	v := NewVerifier(VerifierConfig{Audience: "notes", Keys: StaticKeys{key.Kid: key.Public()}})
	return v, m
}

// BenchmarkVerifyCached is a caller reusing its token: the cache answers.
func BenchmarkVerifyCached(b *testing.B) {
	v, m := benchSetup(b)
	tok, _ := m.Token("notes", Tenant{ID: "01a209cf-ceac-7875-8189-ba2f30d64a83", Slug: "acme"}, false)
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCold is the full check of a token never seen before.
func BenchmarkVerifyCold(b *testing.B) {
	v, m := benchSetup(b)
	toks := make([]string, 2000)
	for i := range toks {
		toks[i], _ = m.Token("notes", Tenant{}, true)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		v.shards = [16]cacheShard{}
		for j := range v.shards {
			v.shards[j].entries = map[[32]byte]*Claims{}
		}
		if _, err := v.Verify(ctx, toks[i%len(toks)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// JWK conversion never panics, and accepts only the three key types, each
// with its own algorithm.
func FuzzJWK(f *testing.F) {
	for _, alg := range []Alg{ES256, EdDSA} {
		k, _ := GenerateKey(alg, "edge/k1")
		j := k.Public().JWK()
		f.Add(j.Kty, j.Crv, j.Alg, j.X, j.Y, j.N, j.E)
	}
	f.Add("RSA", "", "RS256", "", "", "AQAB", "AQAB")
	f.Fuzz(func(t *testing.T, kty, crv, alg, x, y, n, e string) {
		k, err := JWK{Kty: kty, Kid: "edge/k1", Crv: crv, Alg: alg, X: x, Y: y, N: n, E: e}.PublicKey()
		if err != nil {
			return
		}
		if (k.Alg == ES256 && kty != "EC") || (k.Alg == RS256 && kty != "RSA") || (k.Alg == EdDSA && kty != "OKP") {
			t.Fatalf("kty %s became %s", kty, k.Alg)
		}
		if alg != "" && Alg(alg) != k.Alg {
			t.Fatalf("alg %s accepted for a %s key", alg, k.Alg)
		}
	})
}
