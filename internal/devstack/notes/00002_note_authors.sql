-- Notes record who wrote them (the calling service or user), and are listed
-- newest first.

-- +goose Up
ALTER TABLE notes ADD COLUMN author text NOT NULL DEFAULT '';
CREATE INDEX notes_created_at ON notes (created_at DESC);

-- +goose Down
DROP INDEX notes_created_at;
ALTER TABLE notes DROP COLUMN author;
