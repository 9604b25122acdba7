package catalog

import (
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
)

// migrationFile is goose's file naming: <version>_<name>.sql.
var migrationFile = regexp.MustCompile(`^(\d{1,18})_([A-Za-z0-9_\-]+)\.sql$`)

// ReadMigrations reads a product's tenant-database migrations from the
// top level of fsys: files named <version>_<name>.sql in goose's SQL format.
// Other files are refused, so that a typo does not silently drop a migration.
func ReadMigrations(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := migrationFile.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, Invalid("invalid_migrations", "%s is not named <version>_<name>.sql", e.Name())
		}
		version, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || version <= 0 {
			return nil, Invalid("invalid_migrations", "%s: version must be a positive number", e.Name())
		}
		data, err := fs.ReadFile(fsys, path.Clean(e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		if len(data) > MaxMigrationBytes {
			return nil, Invalid("invalid_migrations", "%s is larger than %d bytes", e.Name(), MaxMigrationBytes)
		}
		out = append(out, Migration{Version: version, Name: m[2], SQL: string(data)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	if err := validateMigrations(out); err != nil {
		return nil, err
	}
	return out, nil
}
