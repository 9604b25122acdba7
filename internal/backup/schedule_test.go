package backup

import (
	"testing"
	"time"
)

func TestScheduleDue(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	set := func(typ Type, stop time.Time) Set { return Set{Type: typ, Start: stop.Add(-time.Minute), Stop: stop} }
	const h, day = time.Hour, 24 * time.Hour
	for _, tt := range []struct {
		name    string
		backups []Set
		want    Type
	}{
		{"no backup", nil, Full},
		{"only an incremental (its full expired)", []Set{set(Incremental, ago(10*time.Minute))}, Full},
		{"a fresh full", []Set{set(Full, ago(10*time.Minute))}, ""},
		{"a full two hours old", []Set{set(Full, ago(2*h))}, Incremental},
		{"a full a day old", []Set{set(Full, ago(day))}, Differential},
		{"a full a week old", []Set{set(Full, ago(7*day)), set(Differential, ago(10*time.Minute))}, Full},
		{"an old full, a fresh differential", []Set{set(Full, ago(3*day)), set(Differential, ago(30*time.Minute))}, ""},
		{"an old differential, a fresh incremental", []Set{set(Full, ago(3*day)), set(Differential, ago(25*h)), set(Incremental, ago(time.Minute))}, Differential},
		{"incrementals due hourly", []Set{set(Full, ago(5*h)), set(Incremental, ago(61*time.Minute))}, Incremental},
	} {
		got, due := DefaultSchedule.Due(Info{Backups: tt.backups}, now)
		if got != tt.want || due != (tt.want != "") {
			t.Errorf("%s: %q %v, want %q", tt.name, got, due, tt.want)
		}
	}
}
