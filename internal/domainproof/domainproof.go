// Package domainproof checks that a tenant controls a custom domain before
// the edge serves the tenant on it: the tenant publishes a token either as
// a DNS TXT record at _plinth-challenge.<domain>, or as a file at
// http://<domain>/.well-known/plinth-challenge/<token>.
//
// The HTTP check runs from the control plane against a name a tenant
// chose, so it refuses to connect to loopback, private and link-local
// addresses (unless told otherwise, for local fleets), follows no redirects,
// and reads at most a few bytes.
package domainproof

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Resolver looks up TXT records (net.DefaultResolver does).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Prover checks proofs of domain control.
type Prover struct {
	Resolver Resolver
	// AllowPrivate lets the HTTP check reach loopback and private addresses
	// (a local fleet's domains resolve there).
	AllowPrivate bool
	// Dial overrides how the HTTP check connects (tests point domains at
	// local servers with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ErrNotProven means neither proof was found.
var ErrNotProven = errors.New("the domain's control is not proven")

// ChallengePath is where the HTTP proof is served.
const ChallengePath = "/.well-known/plinth-challenge/"

// Prove checks the DNS proof, then the HTTP proof, of domain with token.
func (p *Prover) Prove(ctx context.Context, domain, token string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var reasons []string
	if p.Resolver != nil {
		txts, err := p.Resolver.LookupTXT(ctx, "_plinth-challenge."+domain)
		for _, t := range txts {
			if strings.TrimSpace(t) == token {
				return nil
			}
		}
		if err != nil {
			reasons = append(reasons, "DNS: "+short(err))
		} else {
			reasons = append(reasons, "DNS: no TXT record at _plinth-challenge."+domain+" holds the token")
		}
	}
	err := p.proveHTTP(ctx, domain, token)
	if err == nil {
		return nil
	}
	reasons = append(reasons, "HTTP: "+short(err))
	return fmt.Errorf("%w (%s)", ErrNotProven, strings.Join(reasons, "; "))
}

func (p *Prover) proveHTTP(ctx context.Context, domain, token string) error {
	dial := p.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 5 * time.Second}
		if !p.AllowPrivate {
			d.Control = refusePrivate
		}
		dial = d.DialContext
	}
	client := &http.Client{
		Transport:     &http.Transport{DialContext: dial, DisableKeepAlives: true, ResponseHeaderTimeout: 5 * time.Second},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+domain+ChallengePath+token, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s answered %s", domain, ChallengePath, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(token))+64))
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(body)) != token {
		return fmt.Errorf("%s%s does not hold the token", domain, ChallengePath)
	}
	return nil
}

// refusePrivate stops connections to addresses that are not public.
func refusePrivate(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() {
		return fmt.Errorf("refusing to connect to %s: not a public address", host)
	}
	return nil
}

func short(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
