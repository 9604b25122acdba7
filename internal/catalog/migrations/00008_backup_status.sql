-- What the scheduled backups last did per stanza (a shard, or the control
-- database as "control"), so that shard list and the metrics need not ask
-- pgBackRest, and a failing backup or archive is visible.

-- +goose Up
CREATE TABLE backup_status (
    stanza            text PRIMARY KEY,
    last_success_at   timestamptz,
    last_type         text NOT NULL DEFAULT '' CHECK (last_type IN ('', 'full', 'diff', 'incr')),
    last_label        text NOT NULL DEFAULT '',
    last_attempt_at   timestamptz,
    last_error        text NOT NULL DEFAULT '',
    -- From the server's pg_stat_archiver at checked_at.
    last_archived_at  timestamptz,
    archive_failed_at timestamptz,
    archive_failures  bigint NOT NULL DEFAULT 0,
    checked_at        timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE backup_status;
