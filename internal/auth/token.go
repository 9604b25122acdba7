package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
	"unicode/utf8"
)

// header is the part of a JWS header Plinth reads. Everything else (jku,
// x5u, jwk, x5c, …) is ignored, except crit, which is refused: Plinth
// understands no extensions.
type header struct {
	Alg  Alg             `json:"alg"`
	Kid  string          `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit,omitempty"`
}

// parsed is a token split and decoded, not yet verified.
type parsed struct {
	header       header
	claims       Claims
	signingInput string
	signature    []byte
}

// parse splits and decodes a compact JWS strictly: at most MaxTokenBytes,
// exactly three base64url parts, JSON objects, an accepted algorithm, a
// well-formed kid. It never allocates in proportion to a malformed token's
// shape (a header of thousands of dots is refused after one scan).
func parse(token string) (*parsed, error) {
	if len(token) > MaxTokenBytes {
		return nil, refuse("token_malformed", "the token is larger than %d bytes", MaxTokenBytes)
	}
	dot1 := strings.IndexByte(token, '.')
	if dot1 < 0 {
		return nil, refuse("token_malformed", "the token is not a compact JWS")
	}
	dot2 := strings.IndexByte(token[dot1+1:], '.')
	if dot2 < 0 {
		return nil, refuse("token_malformed", "the token is not a compact JWS")
	}
	dot2 += dot1 + 1
	if strings.IndexByte(token[dot2+1:], '.') >= 0 {
		return nil, refuse("token_malformed", "the token has more than three parts")
	}
	h64, c64, s64 := token[:dot1], token[dot1+1:dot2], token[dot2+1:]
	// An empty signature is left for verifySignature to refuse, after the
	// header: "alg none" then gets its own, clearer refusal.
	if h64 == "" || c64 == "" || len(h64) > 2048 {
		return nil, refuse("token_malformed", "the token has an empty or oversized part")
	}
	p := &parsed{signingInput: token[:dot2]}
	hb, err := base64.RawURLEncoding.DecodeString(h64)
	if err != nil {
		return nil, refuse("token_malformed", "the header is not base64url")
	}
	if err := decodeObject(hb, &p.header); err != nil {
		return nil, refuse("token_malformed", "the header is not a JSON object")
	}
	if p.header.Crit != nil {
		return nil, refuse("token_malformed", "the header has critical extensions (crit), which are not supported")
	}
	switch p.header.Alg {
	case ES256, RS256, EdDSA:
	default:
		return nil, refuse("alg_not_allowed", "algorithm %q is not accepted", truncate(string(p.header.Alg), 20))
	}
	if p.header.Typ != "" && !strings.EqualFold(p.header.Typ, "JWT") {
		return nil, refuse("token_malformed", "typ must be JWT")
	}
	if _, err := ValidateKid(p.header.Kid); err != nil {
		return nil, err
	}
	cb, err := base64.RawURLEncoding.DecodeString(c64)
	if err != nil {
		return nil, refuse("token_malformed", "the claims are not base64url")
	}
	if err := decodeObject(cb, &p.claims); err != nil {
		return nil, refuse("token_malformed", "the claims are not valid: %s", truncate(err.Error(), 80))
	}
	if p.signature, err = base64.RawURLEncoding.DecodeString(s64); err != nil {
		return nil, refuse("token_malformed", "the signature is not base64url")
	}
	return p, nil
}

// decodeObject decodes one JSON object and nothing after it.
func decodeObject(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return fmt.Errorf("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// verifySignature checks p's signature with key, using the key's own
// algorithm, which must be the one the header names.
func (p *parsed) verifySignature(key PublicKey) error {
	if key.Alg != p.header.Alg {
		return refuse("bad_signature", "the key %s verifies %s, not %s", key.Kid, key.Alg, p.header.Alg)
	}
	ok := false
	switch k := key.key.(type) {
	case *ecdsa.PublicKey:
		if len(p.signature) == 64 {
			h := sha256.Sum256([]byte(p.signingInput))
			r := new(big.Int).SetBytes(p.signature[:32])
			s := new(big.Int).SetBytes(p.signature[32:])
			ok = ecdsa.Verify(k, h[:], r, s)
		}
	case *rsa.PublicKey:
		h := sha256.Sum256([]byte(p.signingInput))
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], p.signature) == nil
	case ed25519.PublicKey:
		ok = len(p.signature) == ed25519.SignatureSize && ed25519.Verify(k, []byte(p.signingInput), p.signature)
	}
	if !ok {
		return refuse("bad_signature", "the signature does not verify")
	}
	return nil
}

// Sign makes a compact JWS of claims with key.
func Sign(key *PrivateKey, claims *Claims) (string, error) {
	h, err := json.Marshal(header{Alg: key.Alg, Kid: key.Kid, Typ: "JWT"})
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	var sig []byte
	switch k := key.signer.(type) {
	case *ecdsa.PrivateKey:
		hash := sha256.Sum256([]byte(input))
		r, s, err := ecdsa.Sign(rand.Reader, k, hash[:])
		if err != nil {
			return "", err
		}
		sig = append(pad32(r), pad32(s)...)
	case *rsa.PrivateKey:
		hash := sha256.Sum256([]byte(input))
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, hash[:]); err != nil {
			return "", err
		}
	case ed25519.PrivateKey:
		sig = ed25519.Sign(k, []byte(input))
	default:
		return "", fmt.Errorf("unsupported key type %T", key.signer)
	}
	return input + "." + enc.EncodeToString(sig), nil
}
