package api

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/plinth-platform/plinth/internal/catalog"
	"github.com/plinth-platform/plinth/internal/provision"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg *prometheus.Registry, store *catalog.Store) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "plinth_api_requests_total", Help: "Control API requests by route, method and status.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "plinth_api_request_duration_seconds", Help: "Control API request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route", "method"}),
	}
	reg.MustRegister(m.requests, m.duration, &catalogCollector{store: store})
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(route, method string, status int, d time.Duration) {
	if status == 0 {
		status = 200
	}
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route, method).Observe(d.Seconds())
}

// catalogCollector reports the catalog's state at scrape time: tenants by
// state, databases and health per shard, warm-pool fill.
type catalogCollector struct{ store *catalog.Store }

var (
	descTenants  = prometheus.NewDesc("plinth_tenants", "Tenants by state.", []string{"state"}, nil)
	descShardDB  = prometheus.NewDesc("plinth_shard_databases", "Live tenant databases per shard.", []string{"shard", "region"}, nil)
	descShardCap = prometheus.NewDesc("plinth_shard_capacity", "Database capacity per shard.", []string{"shard", "region"}, nil)
	descShardUp  = prometheus.NewDesc("plinth_shard_healthy", "1 when the shard's last health checks passed.", []string{"shard", "region"}, nil)
	descWarm     = prometheus.NewDesc("plinth_warm_pool_ready", "Warm databases ready to claim.", []string{"shard", "product"}, nil)
	descWarmSize = prometheus.NewDesc("plinth_warm_pool_size", "Target size of the warm pool.", []string{"shard", "product"}, nil)
	// Per tier, not per tenant: thousands of tenants would be thousands of
	// series; GET /v1/drill-report names them.
	descBackupLast = prometheus.NewDesc("plinth_backup_last_success_timestamp_seconds",
		"When the newest backup of the stanza (a shard, or control) finished.", []string{"stanza"}, nil)
	descBackupFailing = prometheus.NewDesc("plinth_backup_failing",
		"1 when the last scheduled backup or archive check of the stanza failed.", []string{"stanza"}, nil)
	descArchiveLag = prometheus.NewDesc("plinth_archive_lag_seconds",
		"Time from the last WAL segment the stanza's server archived to the last check.", []string{"stanza"}, nil)
	descArchiveFailures = prometheus.NewDesc("plinth_archive_failures",
		"WAL segments the stanza's server failed to archive since its statistics were reset.", []string{"stanza"}, nil)
	descDrillOverdue = prometheus.NewDesc("plinth_drill_overdue_tenants",
		"Restorable tenants without a successful drill in two weeks, by tier.", []string{"tier"}, nil)
	descDrillOldest = prometheus.NewDesc("plinth_drill_oldest_success_timestamp_seconds",
		"The oldest of the tier's tenants' last successful drills (0 when one was never drilled).", []string{"tier"}, nil)
)

func (c *catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTenants, descShardDB, descShardCap, descShardUp, descWarm, descWarmSize, descDrillOverdue, descDrillOldest,
		descBackupLast, descBackupFailing, descArchiveLag, descArchiveFailures} {
		ch <- d
	}
}

func (c *catalogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if counts, err := c.store.CountTenants(ctx); err == nil {
		for _, s := range catalog.TenantStates {
			ch <- prometheus.MustNewConstMetric(descTenants, prometheus.GaugeValue, float64(counts[s]), string(s))
		}
	}
	if tiers, _, err := c.store.DrillReport(ctx, provision.DrillOverdueDefault, 0); err == nil {
		for _, t := range tiers {
			tier := strconv.Itoa(t.Tier)
			oldest := 0.0
			if t.OldestSuccess != nil {
				oldest = float64(t.OldestSuccess.Unix())
			}
			ch <- prometheus.MustNewConstMetric(descDrillOverdue, prometheus.GaugeValue, float64(t.Overdue), tier)
			ch <- prometheus.MustNewConstMetric(descDrillOldest, prometheus.GaugeValue, oldest, tier)
		}
	}
	if status, err := c.store.ListBackupStatus(ctx); err == nil {
		for _, b := range status {
			if b.LastSuccessAt != nil {
				ch <- prometheus.MustNewConstMetric(descBackupLast, prometheus.GaugeValue, float64(b.LastSuccessAt.Unix()), b.Stanza)
			}
			failing := 0.0
			if b.LastError != "" {
				failing = 1
			}
			ch <- prometheus.MustNewConstMetric(descBackupFailing, prometheus.GaugeValue, failing, b.Stanza)
			if b.LastArchivedAt != nil {
				ch <- prometheus.MustNewConstMetric(descArchiveLag, prometheus.GaugeValue, b.CheckedAt.Sub(*b.LastArchivedAt).Seconds(), b.Stanza)
			}
			ch <- prometheus.MustNewConstMetric(descArchiveFailures, prometheus.GaugeValue, float64(b.ArchiveFailures), b.Stanza)
		}
	}
	if shards, err := c.store.ListShards(ctx, ""); err == nil {
		for _, sh := range shards {
			up := 0.0
			if sh.Health == catalog.ShardHealthy {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descShardDB, prometheus.GaugeValue, float64(sh.Databases), sh.Name, sh.Region)
			ch <- prometheus.MustNewConstMetric(descShardCap, prometheus.GaugeValue, float64(sh.Capacity), sh.Name, sh.Region)
			ch <- prometheus.MustNewConstMetric(descShardUp, prometheus.GaugeValue, up, sh.Name, sh.Region)
		}
	}
	if pools, err := c.store.ListWarmPools(ctx); err == nil {
		for _, p := range pools {
			ch <- prometheus.MustNewConstMetric(descWarm, prometheus.GaugeValue, float64(p.Ready), p.Shard, p.Product)
			ch <- prometheus.MustNewConstMetric(descWarmSize, prometheus.GaugeValue, float64(p.Size), p.Shard, p.Product)
		}
	}
}
