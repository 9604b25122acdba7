package catalog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// BackupStatus is what the scheduled backups last found and did for one
// stanza: a shard, or the control database ("control").
type BackupStatus struct {
	Stanza          string     `json:"stanza"`
	LastSuccessAt   *time.Time `json:"last_success_at"`
	LastType        string     `json:"last_type,omitempty"`
	LastLabel       string     `json:"last_label,omitempty"`
	LastAttemptAt   *time.Time `json:"last_attempt_at,omitempty"`
	LastError       string     `json:"last_error,omitempty"`
	LastArchivedAt  *time.Time `json:"last_archived_at"`
	ArchiveFailedAt *time.Time `json:"archive_failed_at,omitempty"`
	ArchiveFailures int64      `json:"archive_failures"`
	CheckedAt       time.Time  `json:"checked_at"`
}

// RecordBackupStatus stores a stanza's status, replacing the last one.
func (s *Store) RecordBackupStatus(ctx context.Context, b BackupStatus) error {
	_, err := s.q.Exec(ctx, `INSERT INTO backup_status (stanza, last_success_at, last_type, last_label, last_attempt_at,
			last_error, last_archived_at, archive_failed_at, archive_failures, checked_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
		ON CONFLICT (stanza) DO UPDATE SET last_success_at = excluded.last_success_at, last_type = excluded.last_type,
			last_label = excluded.last_label, last_attempt_at = coalesce(excluded.last_attempt_at, backup_status.last_attempt_at),
			last_error = excluded.last_error, last_archived_at = excluded.last_archived_at,
			archive_failed_at = excluded.archive_failed_at, archive_failures = excluded.archive_failures, checked_at = now()`,
		b.Stanza, b.LastSuccessAt, b.LastType, b.LastLabel, b.LastAttemptAt, Truncate(b.LastError, 1000),
		b.LastArchivedAt, b.ArchiveFailedAt, b.ArchiveFailures)
	if err != nil {
		return fmt.Errorf("record backup status of %s: %w", b.Stanza, err)
	}
	return nil
}

// ListBackupStatus returns every stanza's status, by name.
func (s *Store) ListBackupStatus(ctx context.Context) ([]BackupStatus, error) {
	rows, err := s.q.Query(ctx, `SELECT stanza, last_success_at, last_type, last_label, last_attempt_at, last_error,
			last_archived_at, archive_failed_at, archive_failures, checked_at
		FROM backup_status ORDER BY stanza`)
	if err != nil {
		return nil, fmt.Errorf("list backup status: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (BackupStatus, error) {
		var b BackupStatus
		return b, row.Scan(&b.Stanza, &b.LastSuccessAt, &b.LastType, &b.LastLabel, &b.LastAttemptAt, &b.LastError,
			&b.LastArchivedAt, &b.ArchiveFailedAt, &b.ArchiveFailures, &b.CheckedAt)
	})
	if err != nil {
		return nil, fmt.Errorf("list backup status: %w", err)
	}
	return out, nil
}
