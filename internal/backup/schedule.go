package backup

import "time"

// Schedule says how often each type of backup is taken. WAL is archived
// continuously besides (at least every ArchiveTimeout), so the recovery
// point is seconds whatever the schedule; backups bound how much WAL a
// restore must replay.
type Schedule struct {
	Full, Differential, Incremental time.Duration
}

// DefaultSchedule beats the usual SaaS disaster-recovery tiers (RPO under
// 1 h for tiers 0 and 1, 8 h for tier 2, 24 h for tier 3) for every tier:
// a full backup weekly, a differential daily, an incremental hourly.
var DefaultSchedule = Schedule{Full: 7 * 24 * time.Hour, Differential: 24 * time.Hour, Incremental: time.Hour}

// Due says which backup of the stanza is due at now, if any: a full one
// when there is none or the last is older than Full, else a differential
// when the last full or differential is older than Differential, else an
// incremental when the last backup is older than Incremental.
func (s Schedule) Due(in Info, now time.Time) (Type, bool) {
	var lastFull, lastDiff, last time.Time
	for _, b := range in.Backups {
		last = later(last, b.Stop)
		switch b.Type {
		case Full:
			lastFull = later(lastFull, b.Stop)
			lastDiff = later(lastDiff, b.Stop)
		case Differential:
			lastDiff = later(lastDiff, b.Stop)
		}
	}
	switch {
	case lastFull.IsZero() || now.Sub(lastFull) >= s.Full:
		return Full, true
	case now.Sub(lastDiff) >= s.Differential:
		return Differential, true
	case now.Sub(last) >= s.Incremental:
		return Incremental, true
	}
	return "", false
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
