-- +goose Up
CREATE TABLE bookmarks (
    id         bigserial PRIMARY KEY,
    url        text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2000),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE bookmarks;
