package sidecar

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plinth-platform/plinth/internal/api"
	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/proxy"
)

// maxTargets bounds how many services one sidecar keeps watching.
const maxTargets = 1000

// target is a service this sidecar calls: its live endpoints (watched
// through the control plane), their health, and where round-robin is.
type target struct {
	name    string
	ready   chan struct{}
	once    sync.Once
	next    atomic.Uint64
	mu      sync.Mutex
	eps     []string // host:port
	replay  bool
	version string
	err     error
	health  map[string]*endpointHealth
}

type endpointHealth struct {
	fails        int
	ejectedUntil time.Time
}

// outbound sends the service's call to http://<egress>/<service>/<path> to
// an instance of <service>, with a token minted for it.
func (s *Sidecar) outbound(req *proxy.Request) proxy.Route {
	name, rest, ok := splitTarget(req.Target)
	if !ok {
		return proxy.Route{Reply: proxy.Problem(400, "bad_target", "call http://<egress>/<service>/<path>")}
	}
	tenant := auth.Tenant{ID: req.Header.Get(HeaderTenantID), Slug: req.Header.Get(HeaderTenantSlug), Region: req.Header.Get(HeaderRegion)}
	req.Target = rest
	return s.Forward(req, name, tenant)
}

// Forward routes req (whose Target is already the path on the service) to
// an instance of service, with a token minted for it on behalf of tenant.
// Client-supplied Plinth-* headers are dropped. The edge forwards through
// this after it has resolved the tenant.
func (s *Sidecar) Forward(req *proxy.Request, name string, tenant auth.Tenant) proxy.Route {
	t, err := s.target(name)
	if err != nil {
		if api.IsCode(err, "service_not_found") {
			return proxy.Route{Reply: proxy.Problem(404, "unknown_service", "there is no service "+name)}
		}
		return proxy.Route{Reply: proxy.Problem(503, "no_endpoints", "the endpoints of "+name+" are unknown: "+err.Error())}
	}
	ep, ok := t.pick("", s.cfg.EjectFor)
	if !ok {
		return proxy.Route{Reply: proxy.Problem(503, "no_endpoints", "no instance of "+name+" is running")}
	}
	sign := func(r *proxy.Request, upstream string) bool {
		token, err := s.minter.Token(name, tenant, t.isReplay())
		if err != nil {
			return false
		}
		r.Header.Set("Authorization", "Bearer "+token)
		r.Header.Set("Host", upstream)
		return true
	}
	req.Header.DelPrefix("Plinth-")
	if !sign(req, ep) {
		return proxy.Route{Reply: proxy.Problem(500, "token_mint_failed", "could not mint a token")}
	}
	s.budget.request()
	route := proxy.Route{
		Upstream:   ep,
		TryTimeout: s.cfg.TryTimeout,
		Attempted: func(upstream string, status int, err error) {
			if t.report(upstream, err == nil && status < 500, s.cfg.EjectAfter, s.cfg.EjectFor) {
				s.metrics.ejections.WithLabelValues(name).Inc()
			}
		},
	}
	// Idempotent requests are retried after any failure; others only when
	// the connection was never made, so the service cannot have seen them.
	replayable := idempotent(req.Method) || req.Header.Get("Idempotency-Key") != ""
	{
		last := ep
		if replayable {
			route.RetryOn = func(status int) bool { return status == 502 || status == 503 || status == 504 }
		}
		route.Next = func(attempt int, err error) (string, bool) {
			if !replayable && !neverConnected(err) {
				return "", false
			}
			if attempt+1 >= s.cfg.MaxAttempts || !s.budget.retry() {
				return "", false
			}
			time.Sleep(backoff(attempt))
			next, ok := t.pick(last, s.cfg.EjectFor)
			if ok {
				last = next
				s.metrics.retries.WithLabelValues(name).Inc()
			}
			return next, ok
		}
		route.BeforeRetry = func(upstream string, r *proxy.Request) { sign(r, upstream) }
	}
	return route
}

// splitTarget splits /<service>/<rest> into the service and /<rest>.
func splitTarget(t string) (service, rest string, ok bool) {
	p := strings.TrimPrefix(t, "/")
	end := strings.IndexAny(p, "/?")
	if end < 0 {
		end = len(p)
	}
	service, rest = p[:end], p[end:]
	if catalog.ValidateName("service", service) != nil {
		return "", "", false
	}
	if !strings.HasPrefix(rest, "/") {
		rest = "/" + rest
	}
	return service, rest, true
}

// neverConnected reports whether err is a failure to open the connection.
func neverConnected(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	return false
}

// backoff is the wait before retry n+1: exponential from 25ms with jitter,
// at most 250ms.
func backoff(n int) time.Duration {
	d := min(25*time.Millisecond<<n, 250*time.Millisecond)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// target returns the watched state of a service, starting its watch on
// first use and waiting (briefly) for the first answer.
func (s *Sidecar) target(name string) (*target, error) {
	v, ok := s.targets.Load(name)
	if !ok {
		n := 0
		s.targets.Range(func(any, any) bool { n++; return n < maxTargets })
		if n >= maxTargets {
			return nil, &api.Problem{Status: 503, Code: "too_many_targets", Detail: "this sidecar watches too many services"}
		}
		var loaded bool
		v, loaded = s.targets.LoadOrStore(name, &target{name: name, ready: make(chan struct{}), health: map[string]*endpointHealth{}})
		if !loaded {
			go s.watch(v.(*target))
		}
	}
	t := v.(*target)
	select {
	case <-t.ready: // the usual case: no timer
	default:
		timer := time.NewTimer(5 * time.Second)
		select {
		case <-t.ready:
		case <-timer.C:
		case <-s.ctx.Done():
		}
		timer.Stop()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.eps) == 0 && t.err != nil {
		return nil, t.err
	}
	return t, nil
}

// watch keeps a target's endpoints current with long polls; when the
// control plane is unreachable the last known endpoints stay in use.
func (s *Sidecar) watch(t *target) {
	version, wait := "", "0s"
	for s.ctx.Err() == nil {
		var eps api.Endpoints
		ctx, cancel := context.WithTimeout(s.ctx, 40*time.Second)
		err := s.controlURL(ctx, "GET", "/v1/services/"+t.name+"/endpoints?wait="+wait+"&version="+url.QueryEscape(version), nil, &eps)
		cancel()
		if err != nil {
			t.mu.Lock()
			t.err = err
			t.mu.Unlock()
			t.once.Do(func() { close(t.ready) })
			select {
			case <-s.ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		addrs := make([]string, 0, len(eps.Endpoints))
		for _, e := range eps.Endpoints {
			if u, err := url.Parse(e.Address); err == nil && u.Host != "" {
				addrs = append(addrs, u.Host)
			}
		}
		t.mu.Lock()
		t.eps, t.replay, t.version, t.err = addrs, eps.ReplayProtection, eps.Version, nil
		t.mu.Unlock()
		t.once.Do(func() { close(t.ready) })
		version, wait = eps.Version, "30s"
	}
}

func (t *target) isReplay() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.replay
}

// pick returns the next endpoint in turn that is not ejected, preferring
// one other than avoid. When every endpoint is ejected it uses them anyway:
// better a likely failure than a certain one.
func (t *target) pick(avoid string, ejectFor time.Duration) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.eps)
	if n == 0 {
		return "", false
	}
	start := int(t.next.Add(1))
	now := time.Now()
	var fallback string
	for i := range n {
		ep := t.eps[(start+i)%n]
		if ep == avoid && n > 1 {
			continue
		}
		if h := t.health[ep]; h != nil && now.Before(h.ejectedUntil) {
			if fallback == "" {
				fallback = ep
			}
			continue
		}
		return ep, true
	}
	if fallback != "" {
		return fallback, true
	}
	return t.eps[start%n], true
}

// report records an attempt's outcome and reports whether it ejected the
// endpoint.
func (t *target) report(ep string, ok bool, ejectAfter int, ejectFor time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.health[ep]
	if h == nil {
		if ok {
			return false
		}
		h = &endpointHealth{}
		t.health[ep] = h
	}
	if ok {
		h.fails = 0
		return false
	}
	h.fails++
	if h.fails >= ejectAfter {
		h.fails = 0
		h.ejectedUntil = time.Now().Add(ejectFor)
		return true
	}
	return false
}

// retryBudget allows retries up to a ratio of the requests of the last ten
// seconds (plus a small floor), so retries cannot multiply load on a
// service that is already failing.
type retryBudget struct {
	ratio float64
	floor float64 // retries allowed per window regardless of traffic
	mu    sync.Mutex
	start time.Time
	reqs  [2]float64 // this window, the previous one
	tries [2]float64
}

func newRetryBudget(ratio, floor float64) *retryBudget {
	return &retryBudget{ratio: ratio, floor: floor, start: time.Now()}
}

const budgetWindow = 10 * time.Second

func (b *retryBudget) roll(now time.Time) {
	for now.Sub(b.start) >= budgetWindow {
		b.reqs[1], b.tries[1] = b.reqs[0], b.tries[0]
		b.reqs[0], b.tries[0] = 0, 0
		b.start = b.start.Add(budgetWindow)
		if now.Sub(b.start) >= budgetWindow {
			b.start = now
			b.reqs[1], b.tries[1] = 0, 0
		}
	}
}

func (b *retryBudget) request() {
	b.mu.Lock()
	b.roll(time.Now())
	b.reqs[0]++
	b.mu.Unlock()
}

func (b *retryBudget) retry() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(time.Now())
	if b.tries[0]+b.tries[1] >= b.floor+b.ratio*(b.reqs[0]+b.reqs[1]) {
		return false
	}
	b.tries[0]++
	return true
}
