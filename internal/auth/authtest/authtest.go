// Package authtest crafts hostile service tokens for tests: every shape of
// forgery and misuse the verifier (and the sidecar in front of a service)
// must refuse, each with the refusal code it must produce.
package authtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"

	"github.com/plinth-platform/plinth/internal/auth"
)

// Attack is a token that must be refused with Code.
type Attack struct {
	Name  string
	Token string
	Code  string
}

// Forger crafts tokens as Issuer, addressed to Audience, with Key (the
// issuer's real, registered key) or with keys of its own.
type Forger struct {
	Issuer   string
	Audience string
	Key      *auth.PrivateKey
	Now      time.Time
}

var b64 = base64.RawURLEncoding

// Claims returns valid claims for a new token.
func (f Forger) Claims() map[string]any {
	now := f.Now.Unix()
	return map[string]any{
		"iss": f.Issuer, "sub": f.Issuer, "aud": f.Audience, "iat": now, "nbf": now, "exp": now + 60,
		"jti": b64.EncodeToString(randBytes(12)),
	}
}

// Header returns a valid header for the forger's key.
func (f Forger) Header() map[string]any {
	return map[string]any{"alg": string(f.Key.Alg), "kid": f.Key.Kid, "typ": "JWT"}
}

// Sign signs header and claims with key (which may be the real key, an
// attacker's, or nil for an empty signature).
func Sign(header, claims map[string]any, signer func(input string) []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(c)
	var sig []byte
	if signer != nil {
		sig = signer(input)
	}
	return input + "." + b64.EncodeToString(sig)
}

// Real signs with the forger's real key.
func (f Forger) Real() func(string) []byte {
	return func(input string) []byte { return signWith(f.Key.Signer(), input) }
}

func signWith(key any, input string) []byte {
	h := sha256.Sum256([]byte(input))
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
		if err != nil {
			panic(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		s.FillBytes(out[32:])
		return out
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, h[:])
		if err != nil {
			panic(err)
		}
		return sig
	case ed25519.PrivateKey:
		return ed25519.Sign(k, []byte(input))
	}
	panic("unsupported key")
}

// Valid returns a token the verifier must accept.
func (f Forger) Valid() string { return Sign(f.Header(), f.Claims(), f.Real()) }

// Attacks returns every hostile token, each with the code it must get.
// replayed is a token the caller has already used once (for audiences with
// replay protection), or "" to leave that attack out.
func (f Forger) Attacks(replayed string) []Attack {
	real := f.Real()
	attackerEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	attackerRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	byAttacker := func(input string) []byte { return signWith(attackerEC, input) }
	with := func(mod func(h, c map[string]any)) (map[string]any, map[string]any) {
		h, c := f.Header(), f.Claims()
		mod(h, c)
		return h, c
	}
	signed := func(mod func(h, c map[string]any)) string {
		h, c := with(mod)
		return Sign(h, c, real)
	}
	now := f.Now.Unix()
	pubPEM := f.Key.Public().PEM()

	var out []Attack
	add := func(name, code, token string) { out = append(out, Attack{Name: name, Token: token, Code: code}) }

	h, c := with(func(h, _ map[string]any) { h["alg"] = "none" })
	add("alg none, no signature", "alg_not_allowed", Sign(h, c, nil))
	add("alg none, with a signature", "alg_not_allowed", Sign(h, c, real))
	add("empty signature", "bad_signature", Sign(f.Header(), f.Claims(), nil))
	h, c = with(func(h, _ map[string]any) { h["alg"] = "HS256" })
	add("HS256 with the public key as secret", "alg_not_allowed", Sign(h, c, func(input string) []byte {
		m := hmac.New(sha256.New, pubPEM)
		m.Write([]byte(input))
		return m.Sum(nil)
	}))
	h, c = with(func(h, _ map[string]any) { h["alg"] = "RS256" })
	add("RS256 header on an EC key (alg confusion)", "bad_signature", Sign(h, c, func(input string) []byte { return signWith(attackerRSA, input) }))
	add("ES256 signed by an attacker's key", "bad_signature", Sign(f.Header(), f.Claims(), byAttacker))
	for name, kid := range map[string]string{
		"kid with ../":       f.Issuer + "/../admin/key",
		"kid absolute path":  "/etc/passwd",
		"kid empty":          "",
		"kid 10 KB":          f.Issuer + "/" + strings.Repeat("a", 10<<10),
		"kid bad characters": f.Issuer + "/key;rm -rf",
		"kid issuer only":    f.Issuer,
	} {
		code := "invalid_kid"
		if name == "kid 10 KB" {
			code = "token_malformed" // over the size limit before anything is read
		}
		add(name, code, signed(func(h, _ map[string]any) { h["kid"] = kid }))
	}
	add("kid of another issuer", "kid_not_owned_by_issuer", signed(func(h, _ map[string]any) { h["kid"] = "other-service/key1" }))
	for _, hdr := range []string{"jku", "x5u"} {
		add(hdr+" pointing at an attacker's keys", "bad_signature", Sign(mustWith(f, func(h, _ map[string]any) {
			h[hdr] = "https://evil.test/keys"
		}), f.Claims(), byAttacker))
	}
	pt, _ := attackerEC.PublicKey.Bytes()
	ejwk := map[string]any{"kty": "EC", "crv": "P-256", "x": b64.EncodeToString(pt[1:33]), "y": b64.EncodeToString(pt[33:])}
	add("embedded jwk of an attacker's key", "bad_signature", Sign(mustWith(f, func(h, _ map[string]any) { h["jwk"] = ejwk }), f.Claims(), byAttacker))
	add("x5c chain of an attacker", "bad_signature", Sign(mustWith(f, func(h, _ map[string]any) { h["x5c"] = []string{"MIIB"} }), f.Claims(), byAttacker))
	add("crit extension", "token_malformed", signed(func(h, _ map[string]any) { h["crit"] = []string{"exp"} }))
	add("expired", "token_expired", signed(func(_, c map[string]any) { c["iat"], c["nbf"], c["exp"] = now-600, now-600, now-120 }))
	add("not yet valid", "token_not_yet_valid", signed(func(_, c map[string]any) { c["nbf"], c["exp"] = now+600, now+660 }))
	add("issued in the future", "token_not_yet_valid", signed(func(_, c map[string]any) { c["iat"], c["exp"] = now+600, now+660 }))
	add("lifetime over 1h", "token_lifetime_too_long", signed(func(_, c map[string]any) { c["exp"] = now + 7200 }))
	add("no exp", "token_malformed", signed(func(_, c map[string]any) { delete(c, "exp") }))
	add("missing aud", "bad_audience", signed(func(_, c map[string]any) { delete(c, "aud") }))
	add("wrong aud", "bad_audience", signed(func(_, c map[string]any) { c["aud"] = "someone-else" }))
	for name, aud := range map[string]any{
		"aud numbers": []int{1, 2}, "aud nested": []any{[]string{f.Audience}}, "aud empty list": []string{},
		"aud object": map[string]any{"aud": f.Audience}, "aud with an empty string": []string{"", f.Audience},
	} {
		add(name, "token_malformed", signed(func(_, c map[string]any) { c["aud"] = aud }))
	}
	add("sub not iss", "bad_subject", signed(func(_, c map[string]any) { c["sub"] = "admin" }))
	add("no jti", "token_malformed", signed(func(_, c map[string]any) { delete(c, "jti") }))
	valid := f.Valid()
	parts := strings.Split(valid, ".")
	claims, _ := b64.DecodeString(parts[1])
	tampered := strings.Replace(string(claims), `"sub":"`+f.Issuer+`"`, `"sub":"`+f.Issuer+`","tid":"victim-tenant"`, 1)
	add("tampered payload", "bad_signature", parts[0]+"."+b64.EncodeToString([]byte(tampered))+"."+parts[2])
	add("truncated signature", "bad_signature", valid[:len(valid)-10])
	add("truncated to two parts", "token_malformed", parts[0]+"."+parts[1])
	add("oversized (> 8 KB)", "token_malformed", signed(func(_, c map[string]any) { c["pad"] = strings.Repeat("x", 9<<10) }))
	add("thousands of dots", "token_malformed", strings.Repeat(".", 50000))
	add("not base64", "token_malformed", "@@@.###.$$$")
	add("header not an object", "token_malformed", b64.EncodeToString([]byte(`"ES256"`))+"."+parts[1]+"."+parts[2])
	if replayed != "" {
		add("replayed jti", "replayed", replayed)
	}
	return out
}

func mustWith(f Forger, mod func(h, c map[string]any)) map[string]any {
	h := f.Header()
	mod(h, nil)
	return h
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
