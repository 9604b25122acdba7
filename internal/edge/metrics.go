package edge

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	refusals *prometheus.CounterVec
	held     prometheus.Counter

	mu     sync.RWMutex
	counts map[seriesKey]prometheus.Counter
	hists  map[seriesKey]prometheus.Observer
}

type seriesKey struct {
	tier   int
	route  string
	status int
}

func newMetrics(reg *prometheus.Registry, e *Edge) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_edge_requests_total", Help: "Requests through the edge by tenant tier, route and status.",
		}, []string{"tier", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "plinth_edge_request_duration_seconds", Help: "Request latency through the edge, service included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"tier", "route"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_edge_refusals_total", Help: "Requests the edge answered itself, by problem code.",
		}, []string{"code"}),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "plinth_edge_held_total", Help: "Requests held while their tenant moved or was restored.",
		}),
		counts: map[seriesKey]prometheus.Counter{}, hists: map[seriesKey]prometheus.Observer{},
	}
	c := e.cache
	counter := func(name, help string, f func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	reg.MustRegister(m.requests, m.duration, m.refusals, m.held,
		counter("plinth_edge_tenant_cache_hits_total", "Tenant lookups answered from the cache.", c.Stats.Hits.Load),
		counter("plinth_edge_tenant_cache_misses_total", "Tenant lookups the cache did not hold.", c.Stats.Misses.Load),
		counter("plinth_edge_tenant_cache_negative_hits_total", "Lookups of unknown tenants answered without the control plane.", c.Stats.NegativeHits.Load),
		counter("plinth_edge_tenant_cache_loads_total", "Tenant contexts loaded from the control plane.", c.Stats.Loads.Load),
		counter("plinth_edge_tenant_cache_stale_total", "Lookups answered from a stale context (control plane unreachable).", c.Stats.Stale.Load),
		counter("plinth_edge_tenant_cache_reloads_total", "Full reloads after falling behind the change feed.", c.Stats.Reloads.Load),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plinth_edge_tenant_cache_entries", Help: "Tenant contexts cached."},
			func() float64 { return float64(c.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plinth_edge_feed_connected", Help: "1 while the change feed is live."},
			func() float64 {
				if c.Connected() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plinth_edge_tenant_context_version", Help: "The change-log version the cache is current at."},
			func() float64 { return float64(c.Version()) }),
	)
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) refused(code string) { m.refusals.WithLabelValues(code).Inc() }

// observe counts one request. Series are looked up once and kept, so the
// hot path costs a read-locked map lookup and no allocation.
func (m *metrics) observe(tier int, route string, status int, took time.Duration) {
	k := seriesKey{tier: tier, route: route, status: status}
	hk := seriesKey{tier: tier, route: route}
	m.mu.RLock()
	c, ok1 := m.counts[k]
	h, ok2 := m.hists[hk]
	m.mu.RUnlock()
	if !ok1 || !ok2 {
		t := "none"
		if tier >= 0 {
			t = strconv.Itoa(tier)
		}
		r := route
		if r == "" {
			r = "none"
		}
		m.mu.Lock()
		if len(m.counts) < 10_000 {
			c = m.requests.WithLabelValues(t, r, strconv.Itoa(status))
			h = m.duration.WithLabelValues(t, r)
			m.counts[k], m.hists[hk] = c, h
		} else {
			c, h = m.requests.WithLabelValues(t, r, strconv.Itoa(status)), m.duration.WithLabelValues(t, r)
		}
		m.mu.Unlock()
	}
	c.Inc()
	h.Observe(took.Seconds())
}
