-- The sample product's first tenant-database migration: notes.

-- +goose Up
CREATE TABLE notes (
    id         bigserial PRIMARY KEY,
    body       text NOT NULL CHECK (length(body) BETWEEN 1 AND 10000),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE notes;
