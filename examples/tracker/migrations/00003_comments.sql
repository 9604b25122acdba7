-- +goose Up
CREATE TABLE comments (
    id         bigserial PRIMARY KEY,
    issue_id   bigint NOT NULL REFERENCES issues (id) ON DELETE CASCADE,
    author     text NOT NULL DEFAULT '' CHECK (length(author) <= 100),
    body       text NOT NULL CHECK (length(body) BETWEEN 1 AND 5000),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_issue ON comments (issue_id, id);
