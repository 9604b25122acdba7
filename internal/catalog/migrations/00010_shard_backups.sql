-- Who backs a shard up: Plinth (pgBackRest, the default) or the shard's
-- provider (a managed cloud database). Plinth neither backs up, restores
-- from nor drills a shard its provider backs up, and shard list says so.

-- +goose Up
ALTER TABLE shards ADD COLUMN backups text NOT NULL DEFAULT 'plinth' CHECK (backups IN ('plinth', 'provider'));

-- +goose Down
ALTER TABLE shards DROP COLUMN backups;
