package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Info is what the repository holds for one stanza.
type Info struct {
	Name   string `json:"shard"`
	Status string `json:"status"` // "ok", or pgBackRest's message
	// Code is pgBackRest's status code: 0 ok, 2 no valid backup, 6 a
	// backup or expire running; Unreadable says which mean trouble.
	Code    int   `json:"status_code"`
	Backups []Set `json:"backups"`
	// ArchiveMin and ArchiveMax are the oldest and newest WAL segments
	// archived.
	ArchiveMin string `json:"archive_min"`
	ArchiveMax string `json:"archive_max"`
}

// Set is one backup.
type Set struct {
	Label      string    `json:"label"`
	Type       Type      `json:"type"`
	Prior      string    `json:"prior"` // the backup it depends on ("" for a full one)
	Start      time.Time `json:"started_at"`
	Stop       time.Time `json:"stopped_at"`
	Size       int64     `json:"size"`      // of the database
	RepoSize   int64     `json:"repo_size"` // in the repository, compressed
	ArchiveMin string    `json:"archive_start"`
	ArchiveMax string    `json:"archive_stop"`
}

// Latest is the newest backup, if any.
func (in Info) Latest() (Set, bool) {
	if len(in.Backups) == 0 {
		return Set{}, false
	}
	return in.Backups[len(in.Backups)-1], true
}

// ParseInfo reads the output of `pgbackrest info --output=json`.
func ParseInfo(data []byte) ([]Info, error) {
	var raw []struct {
		Name   string `json:"name"`
		Status struct {
			Code    *int   `json:"code"`
			Message string `json:"message"`
		} `json:"status"`
		Repo []struct {
			Status struct {
				Message string `json:"message"`
			} `json:"status"`
		} `json:"repo"`
		Archive []struct {
			Min string `json:"min"`
			Max string `json:"max"`
		} `json:"archive"`
		Backup []struct {
			Label   string `json:"label"`
			Type    string `json:"type"`
			Prior   string `json:"prior"`
			Archive struct {
				Start string `json:"start"`
				Stop  string `json:"stop"`
			} `json:"archive"`
			Info struct {
				Size       int64 `json:"size"`
				Repository struct {
					Size int64 `json:"size"`
				} `json:"repository"`
			} `json:"info"`
			Timestamp struct {
				Start int64 `json:"start"`
				Stop  int64 `json:"stop"`
			} `json:"timestamp"`
		} `json:"backup"`
	}
	// A repository read with the wrong key makes pgBackRest quote the
	// garbage it decrypted, control bytes and all, which is not JSON.
	// Outside strings a space is whitespace, inside one it is a character.
	data = bytes.Map(func(r rune) rune {
		if r < 0x20 {
			return ' '
		}
		return r
	}, data)
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("backup: pgbackrest info: %w", err)
	}
	out := make([]Info, 0, len(raw))
	for _, r := range raw {
		if r.Name == "" || r.Status.Code == nil {
			return nil, errors.New("backup: pgbackrest info: a stanza without a name or status")
		}
		in := Info{Name: r.Name, Status: "ok", Code: *r.Status.Code, Backups: []Set{}}
		if in.Code != 0 {
			in.Status = r.Status.Message
			// "other" says nothing; the repository's own message says why.
			for _, repo := range r.Repo {
				if m := repo.Status.Message; m != "" {
					in.Status = firstLine(m)
				}
			}
		}
		for _, a := range r.Archive {
			if in.ArchiveMin == "" || a.Min < in.ArchiveMin {
				in.ArchiveMin = a.Min
			}
			if a.Max > in.ArchiveMax {
				in.ArchiveMax = a.Max
			}
		}
		for _, b := range r.Backup {
			typ := Type(b.Type)
			switch typ {
			case Full, Differential, Incremental:
			default:
				return nil, fmt.Errorf("backup: pgbackrest info: backup %q has unknown type %q", b.Label, b.Type)
			}
			if b.Label == "" || b.Timestamp.Start <= 0 || b.Timestamp.Stop < b.Timestamp.Start || b.Info.Size < 0 || b.Info.Repository.Size < 0 {
				return nil, fmt.Errorf("backup: pgbackrest info: backup %q is malformed", b.Label)
			}
			in.Backups = append(in.Backups, Set{Label: b.Label, Type: typ, Prior: b.Prior,
				Start: time.Unix(b.Timestamp.Start, 0).UTC(), Stop: time.Unix(b.Timestamp.Stop, 0).UTC(),
				Size: b.Info.Size, RepoSize: b.Info.Repository.Size,
				ArchiveMin: b.Archive.Start, ArchiveMax: b.Archive.Stop})
		}
		out = append(out, in)
	}
	return out, nil
}

// Unreadable is why the stanza's repository cannot be used, or nil when it
// can (possibly still without a backup, or with one running).
func (in Info) Unreadable() error {
	switch in.Code {
	case 0, 2, 6: // ok, no valid backup yet, a backup or expire running
		return nil
	}
	why := in.Status
	if strings.Contains(why, "FormatError") || strings.Contains(why, "CryptoError") {
		why = "its files do not decrypt: the repository key is wrong or the repository is corrupted"
	}
	return fmt.Errorf("backup: the repository of %s cannot be read (pgBackRest status %d): %s", in.Name, in.Code, why)
}

// firstLine is a message's first line, cut at 200 bytes: what a failed
// decryption quotes comes after it.
func firstLine(m string) string {
	m, _, _ = strings.Cut(m, "\n")
	if len(m) > 200 {
		m = m[:200]
	}
	return strings.TrimSpace(m)
}
