package backup_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-platform/plinth/internal/backup"
	"github.com/plinth-platform/plinth/internal/testkit"
)

const goodConfig = `{
  "home": "/var/lib/plinth/pgbackrest",
  "repo": "/var/lib/plinth/backups",
  "key_file": "/etc/plinth/backup.key",
  "stanzas": [{"name": "shard-1", "data_dir": "/var/lib/postgresql/15/main", "port": 5432, "socket_dir": "/var/run/postgresql"}]
}`

func TestParseFileConfig(t *testing.T) {
	t.Parallel()
	if _, err := backup.ParseFileConfig([]byte(goodConfig)); err != nil {
		t.Fatalf("a good config: %v", err)
	}
	edit := func(old, new string) string { return strings.Replace(goodConfig, old, new, 1) }
	s3 := edit(`"repo": "/var/lib/plinth/backups"`, `"s3": {"endpoint": "s3.eu-west-1.amazonaws.com", "bucket": "b", "region": "eu-west-1",
		"key_file": "/etc/plinth/s3.key", "secret_file": "/etc/plinth/s3.secret"}`)
	if _, err := backup.ParseFileConfig([]byte(s3)); err != nil {
		t.Fatalf("an S3 config: %v", err)
	}
	for _, tt := range []struct {
		name, config, want string
	}{
		{"not JSON", `{`, "unexpected EOF"},
		{"two values", goodConfig + `{}`, "more than one"},
		{"an unknown field", edit(`"home"`, `"homer": "/x", "home"`), "unknown field"},
		{"a relative home", edit(`"/var/lib/plinth/pgbackrest"`, `"pgbackrest"`), "home must be an absolute path"},
		{"no repository", edit(`"repo": "/var/lib/plinth/backups",`, ``), "repo (a directory) or s3"},
		{"no key file", edit(`"/etc/plinth/backup.key"`, `""`), "key_file must be an absolute path"},
		{"no stanza", edit(`[{"name": "shard-1", "data_dir": "/var/lib/postgresql/15/main", "port": 5432, "socket_dir": "/var/run/postgresql"}]`, `[]`), "at least one stanza"},
		{"a bad stanza name", edit(`"shard-1"`, `"shard 1"`), "not a shard name"},
		{"a stanza twice", edit(`"/var/run/postgresql"}]`, `"/var/run/postgresql"}, {"name": "shard-1", "data_dir": "/d", "port": 1, "socket_dir": "/s"}]`), "named twice"},
		{"a port out of range", edit(`5432`, `70000`), "not a TCP port"},
		{"a relative data directory", edit(`"/var/lib/postgresql/15/main"`, `"main"`), "data_dir must be an absolute path"},
		{"retention too long", edit(`"home"`, `"retention_days": 99999, "home"`), "retention_days"},
		{"S3 without a bucket", strings.Replace(s3, `"bucket": "b", `, ``, 1), "s3.bucket is required"},
		{"S3 with a bad URI style", strings.Replace(s3, `"region"`, `"uri_style": "virtual", "region"`, 1), "host or path"},
		{"S3 without a secret file", strings.Replace(s3, `, "secret_file": "/etc/plinth/s3.secret"`, ``, 1), "s3.secret_file"},
	} {
		_, err := backup.ParseFileConfig([]byte(tt.config))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.want)
		}
	}
}

func FuzzParseFileConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte(`{"home": "/h", "s3": {"endpoint": "e", "bucket": "b", "region": "r", "key_file": "/k", "secret_file": "/s"}, "key_file": "/k", "stanzas": []}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fc, err := backup.ParseFileConfig(data)
		if err != nil {
			return
		}
		// What it accepts is whole: absolute paths, one repository, stanzas.
		if !filepath.IsAbs(fc.Home) || !filepath.IsAbs(fc.KeyFile) || (fc.Repo == "" && fc.S3 == nil) || len(fc.Stanzas) == 0 {
			t.Fatalf("accepted an incomplete config: %+v", fc)
		}
		for _, s := range fc.Stanzas {
			if s.Port < 1 || s.Port > 65535 || !filepath.IsAbs(s.DataDir) {
				t.Fatalf("accepted a bad stanza: %+v", s)
			}
		}
	})
}

// Open reads the secrets from their files and writes them only into
// pgBackRest's configuration (mode 0600); an S3 repository is configured as
// one, and a missing secret file is named by its setting.
func TestOpenFileConfig(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("pgbackrest"); err != nil {
		testkit.Unavailable(t, "pgbackrest is not installed (apt install pgbackrest)")
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := write("backup.key", "file-config-test-key-0123456789abcdef")
	ak, sk := write("s3.key", "AKIDEXAMPLE"), write("s3.secret", "s3-secret-example")
	fc := backup.FileConfig{Home: filepath.Join(dir, "br"), KeyFile: key,
		S3:      &backup.FileS3{Endpoint: "127.0.0.1:9000", Bucket: "plinth", Region: "us-east-1", URIStyle: "path", KeyFile: ak, SecretFile: sk},
		Stanzas: []backup.FileStanza{{Name: "s1", DataDir: "/pg/data", Port: 5433, SocketDir: "/pg/s"}}}
	br, err := fc.Open()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(br.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(br.ConfigPath())
	conf := string(data)
	for _, want := range []string{"repo1-type=s3\n", "repo1-s3-bucket=plinth\n", "repo1-s3-uri-style=path\n",
		"repo1-s3-key=AKIDEXAMPLE\n", "repo1-s3-key-secret=s3-secret-example\n", "repo1-path=/plinth\n",
		"repo1-cipher-pass=file-config-test-key-0123456789abcdef\n", "[s1]\npg1-path=/pg/data\npg1-port=5433\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("pgbackrest.conf lacks %q:\n%s", want, conf)
		}
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("pgbackrest.conf has mode %v, want 0600 (it holds the keys)", st.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, "plinth")); !os.IsNotExist(err) {
		t.Errorf("an S3 repository made a local directory: %v", err)
	}

	fc.S3.SecretFile = filepath.Join(dir, "missing")
	if _, err := fc.Open(); err == nil || !strings.Contains(err.Error(), "s3.secret_file") {
		t.Errorf("a missing secret file: %v", err)
	}
}
