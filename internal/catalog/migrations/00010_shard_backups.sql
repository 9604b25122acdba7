-- Who backs a shard up: Plinth (pgBackRest, the default) or the shard's
-- provider (a managed cloud database). Plinth neither restores from nor
-- drills a shard its provider backs up (and has no stanza to back it up
-- with), and shard list says so.

-- +goose Up
ALTER TABLE shards ADD COLUMN backups text NOT NULL DEFAULT 'plinth' CHECK (backups IN ('plinth', 'provider'));

-- +goose Down
ALTER TABLE shards DROP COLUMN backups;
