package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strings"
)

// kidPattern is the ASAP key ID alphabet.
var kidPattern = regexp.MustCompile(`^[\w.\-+/]+$`)

// ValidateKid checks a key ID: the ASAP alphabet, at most MaxKidBytes, no
// "..", no leading "/", and "<issuer>/<key-name>" with both parts present.
// It returns the issuer part.
func ValidateKid(kid string) (issuer string, err error) {
	switch {
	case kid == "":
		return "", refuse("invalid_kid", "the token has no kid")
	case len(kid) > MaxKidBytes:
		return "", refuse("invalid_kid", "kid is longer than %d bytes", MaxKidBytes)
	case !kidPattern.MatchString(kid):
		return "", refuse("invalid_kid", "kid has characters outside [A-Za-z0-9_.+/-]")
	case strings.Contains(kid, ".."), strings.HasPrefix(kid, "/"), strings.Contains(kid, "//"):
		return "", refuse("invalid_kid", "kid must not contain '..' or '//' or start with '/'")
	}
	issuer, name, ok := strings.Cut(kid, "/")
	if !ok || issuer == "" || name == "" || strings.HasSuffix(name, "/") {
		return "", refuse("invalid_kid", "kid must be <issuer>/<key-name>")
	}
	return issuer, nil
}

// PublicKey is a verification key and the one algorithm it may verify.
type PublicKey struct {
	Kid string
	Alg Alg
	key crypto.PublicKey
}

// PrivateKey is a signing key. It never leaves the process that made it.
type PrivateKey struct {
	Kid    string
	Alg    Alg
	signer crypto.Signer
}

// GenerateKey makes a new key pair for alg with key ID kid.
func GenerateKey(alg Alg, kid string) (*PrivateKey, error) {
	if _, err := ValidateKid(kid); err != nil {
		return nil, err
	}
	var signer crypto.Signer
	var err error
	switch alg {
	case ES256, "":
		alg = ES256
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RS256:
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case EdDSA:
		_, signer, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("unsupported algorithm %q: use ES256, RS256 or EdDSA", alg)
	}
	if err != nil {
		return nil, err
	}
	return &PrivateKey{Kid: kid, Alg: alg, signer: signer}, nil
}

// Public returns the public half.
func (k *PrivateKey) Public() PublicKey {
	return PublicKey{Kid: k.Kid, Alg: k.Alg, key: k.signer.Public()}
}

// Signer returns the key as a crypto.Signer (for interoperability tests).
func (k *PrivateKey) Signer() crypto.Signer { return k.signer }

// PEM encodes the public key as PEM (PKIX), the key repository's format.
func (k PublicKey) PEM() []byte {
	der, err := x509.MarshalPKIXPublicKey(k.key)
	if err != nil {
		panic(err) // only the key types made here reach this
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// Crypto returns the key as a crypto.PublicKey.
func (k PublicKey) Crypto() crypto.PublicKey { return k.key }

// ParsePublicKeyPEM parses a PEM (PKIX) public key and binds it to the one
// algorithm its type allows: P-256 to ES256, RSA of 2048 bits or more to
// RS256, Ed25519 to EdDSA. Anything else is refused.
func ParsePublicKeyPEM(kid string, data []byte) (PublicKey, error) {
	if len(data) > 16<<10 {
		return PublicKey{}, errors.New("public key is larger than 16 KB")
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" || len(strings.TrimSpace(string(rest))) != 0 {
		return PublicKey{}, errors.New("not a single PEM PUBLIC KEY block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse public key: %w", err)
	}
	k := PublicKey{Kid: kid, key: pub}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if p.Curve != elliptic.P256() {
			return PublicKey{}, errors.New("ECDSA keys must use P-256 (ES256)")
		}
		k.Alg = ES256
	case *rsa.PublicKey:
		if p.N.BitLen() < 2048 {
			return PublicKey{}, errors.New("RSA keys must have at least 2048 bits")
		}
		k.Alg = RS256
	case ed25519.PublicKey:
		k.Alg = EdDSA
	default:
		return PublicKey{}, fmt.Errorf("unsupported key type %T", pub)
	}
	return k, nil
}

// JWK is a public key in JSON Web Key form.
type JWK struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
}

// JWK returns the key as a JSON Web Key.
func (k PublicKey) JWK() JWK {
	b64 := base64.RawURLEncoding.EncodeToString
	j := JWK{Kid: k.Kid, Alg: string(k.Alg), Use: "sig"}
	switch p := k.key.(type) {
	case *ecdsa.PublicKey:
		pt, err := p.Bytes() // 0x04 || X || Y
		if err != nil || len(pt) != 65 {
			panic("P-256 key without an uncompressed encoding") // only keys made or parsed here reach this
		}
		j.Kty, j.Crv = "EC", "P-256"
		j.X, j.Y = b64(pt[1:33]), b64(pt[33:])
	case *rsa.PublicKey:
		j.Kty = "RSA"
		j.N, j.E = b64(p.N.Bytes()), b64(big.NewInt(int64(p.E)).Bytes())
	case ed25519.PublicKey:
		j.Kty, j.Crv, j.X = "OKP", "Ed25519", b64(p)
	}
	return j
}

func pad32(n *big.Int) []byte {
	b := make([]byte, 32)
	return n.FillBytes(b)
}

// JWKS is a set of JSON Web Keys, as the key repository serves one issuer's keys.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// PublicKey converts a JWK into a verification key, refusing anything but
// P-256 (ES256), RSA of 2048 bits or more (RS256) and Ed25519 (EdDSA), and
// an alg that does not match the key's type.
func (j JWK) PublicKey() (PublicKey, error) {
	if _, err := ValidateKid(j.Kid); err != nil {
		return PublicKey{}, err
	}
	dec := base64.RawURLEncoding.DecodeString
	k := PublicKey{Kid: j.Kid}
	switch {
	case j.Kty == "EC" && j.Crv == "P-256":
		x, errX := dec(j.X)
		y, errY := dec(j.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return PublicKey{}, errors.New("bad P-256 coordinates")
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return PublicKey{}, fmt.Errorf("bad P-256 key: %w", err)
		}
		k.Alg, k.key = ES256, pub
	case j.Kty == "RSA":
		n, errN := dec(j.N)
		e, errE := dec(j.E)
		if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
			return PublicKey{}, errors.New("bad RSA key")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < 2048 || pub.E < 3 || pub.E%2 == 0 {
			return PublicKey{}, errors.New("RSA keys must have at least 2048 bits and an odd exponent")
		}
		k.Alg, k.key = RS256, pub
	case j.Kty == "OKP" && j.Crv == "Ed25519":
		x, err := dec(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return PublicKey{}, errors.New("bad Ed25519 key")
		}
		k.Alg, k.key = EdDSA, ed25519.PublicKey(x)
	default:
		return PublicKey{}, fmt.Errorf("unsupported key type %q %q", j.Kty, j.Crv)
	}
	if j.Alg != "" && Alg(j.Alg) != k.Alg {
		return PublicKey{}, fmt.Errorf("key %s is %s but claims alg %s", j.Kid, k.Alg, j.Alg)
	}
	return k, nil
}
