package backup

import (
	"strings"
	"testing"
)

const verifyOK = `2026-12-07 07:46:42.558 P00   INFO: verify command begin 2.45: --config=/x/pgbackrest.conf --output=text
2026-12-07 07:46:43.047 P00   INFO: stanza: shard-1
                                    status: ok
                                      archiveId: 15-1, total WAL checked: 3, total valid WAL: 3
                                        missing: 0, checksum invalid: 0, size invalid: 0, other: 0
                                      backup: 20261207-074638F, status: valid, total files checked: 965, total valid files: 965
stanza: shard-1
status: ok
  archiveId: 15-1, total WAL checked: 3, total valid WAL: 3
  backup: 20261207-074638F, status: valid, total files checked: 965, total valid files: 965
2026-12-07 07:46:43.048 P00   INFO: verify command end: completed successfully (496ms)
`

const verifyCorrupt = `2026-12-07 07:46:43.188 P00   INFO: verify command begin 2.45: --output=text
2026-12-07 07:46:43.447 P01   INFO: invalid checksum '20261207-074638F/pg_data/backup_label.zst'
2026-12-07 07:46:43.754 P00   INFO: stanza: shard-1
                                    status: error
                                      backup: 20261207-074638F, status: invalid, total files checked: 965, total valid files: 964
stanza: shard-1
status: error
  backup: 20261207-074638F, status: invalid, total files checked: 965, total valid files: 964
2026-12-07 07:46:43.754 P00   INFO: verify command end: completed successfully (573ms)
`

func TestParseVerify(t *testing.T) {
	for _, tt := range []struct {
		name, out, want string
	}{
		{"sound", verifyOK, ""},
		{"a corrupted file", verifyCorrupt, "invalid checksum '20261207-074638F/pg_data/backup_label.zst'"},
		{"nothing printed", "", "no status"},
		{"only the log", "2026-12-07 07:48:01.397 P00   INFO: verify command end: completed successfully (597ms)\n", "no status"},
	} {
		err := ParseVerify(tt.out)
		if (tt.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	// The report is in the log and on stdout: each problem is named once.
	if err := ParseVerify(verifyCorrupt); strings.Count(err.Error(), "status: invalid") != 1 {
		t.Errorf("repeated problems: %v", err)
	}
}

func FuzzParseVerify(f *testing.F) {
	f.Add(verifyOK)
	f.Add(verifyCorrupt)
	f.Fuzz(func(t *testing.T, out string) {
		err := ParseVerify(out)
		if err == nil && !strings.Contains(out, "status: ok") {
			t.Fatalf("passed without an ok status: %q", out)
		}
	})
}
