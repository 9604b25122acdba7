-- +goose Up
CREATE TABLE issues (
    id         bigserial PRIMARY KEY,
    project_id bigint NOT NULL REFERENCES projects (id),
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body       text NOT NULL DEFAULT '' CHECK (length(body) <= 10000),
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in_progress', 'done')),
    assignee   text NOT NULL DEFAULT '' CHECK (length(assignee) <= 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX issues_project ON issues (project_id, id);
