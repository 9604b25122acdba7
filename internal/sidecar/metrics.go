package sidecar

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/plinth-platform/plinth/internal/proxy"
	"github.com/plinth-platform/plinth/internal/ratelimit"
)

type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	retries    *prometheus.CounterVec
	ejections  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, s *Sidecar) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_sidecar_requests_total", Help: "Requests through the sidecar by direction and status.",
		}, []string{"direction", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "plinth_sidecar_request_duration_seconds", Help: "Request latency through the sidecar, upstream included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, []string{"direction"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_sidecar_rejections_total", Help: "Inbound requests refused, by reason.",
		}, []string{"reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_sidecar_retries_total", Help: "Outbound retries by target service.",
		}, []string{"target"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_sidecar_ejections_total", Help: "Instances ejected after consecutive failures, by target.",
		}, []string{"target"}),
	}
	reg.MustRegister(m.requests, m.duration, m.rejections, m.retries, m.ejections,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "plinth_sidecar_token_cache_hits_total", Help: "Inbound tokens answered from the verified-token cache.",
		}, func() float64 { h, _ := s.verifier.CacheStats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "plinth_sidecar_token_cache_misses_total", Help: "Inbound tokens verified in full.",
		}, func() float64 { _, m := s.verifier.CacheStats(); return float64(m) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "plinth_sidecar_ratelimit_fallback_total", Help: "Rate-limit decisions made by the fallback because Redis failed.",
		}, func() float64 {
			if sh, ok := s.limiter.(*ratelimit.Shared); ok {
				return float64(sh.Degraded())
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "plinth_sidecar_key_generation", Help: "The signing key generation in use.",
		}, func() float64 { return float64(s.keyGen.Load()) }),
	)
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) rejected(reason string) { m.rejections.WithLabelValues(reason).Inc() }

// observe returns the engine's per-request hook for one direction. The
// counter of each status is looked up once and kept, so counting costs no
// allocation.
func (m *metrics) observe(direction string) func(*proxy.Request, int, time.Duration) {
	hist := m.duration.WithLabelValues(direction)
	var byStatus [600]atomic.Pointer[prometheus.Counter]
	return func(_ *proxy.Request, status int, took time.Duration) {
		hist.Observe(took.Seconds())
		if status < 0 || status >= len(byStatus) {
			m.requests.WithLabelValues(direction, strconv.Itoa(status)).Inc()
			return
		}
		c := byStatus[status].Load()
		if c == nil {
			counter := m.requests.WithLabelValues(direction, strconv.Itoa(status))
			c = &counter
			byStatus[status].Store(c)
		}
		(*c).Inc()
	}
}
