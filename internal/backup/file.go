package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/plinth-platform/plinth/internal/fleet/localpg"
)

// FileConfig is the backup configuration `plinth serve --backup-config`
// reads: where the repository is, the file holding its key, and the
// shards whose servers run on this host (pgBackRest reads their data
// directories). Secrets are not in it, only the paths of files that hold
// them, so the file itself can be shared and reviewed.
type FileConfig struct {
	// Home holds pgBackRest's configuration, lock and log directories.
	Home string `json:"home"`
	// Repo is a repository directory on this host; S3 puts the repository
	// in a bucket instead (then Repo is its path in the bucket, "/plinth"
	// by default).
	Repo string  `json:"repo,omitempty"`
	S3   *FileS3 `json:"s3,omitempty"`
	// KeyFile holds the repository's AES-256 key (one line, at least 32
	// characters).
	KeyFile       string `json:"key_file"`
	RetentionDays int    `json:"retention_days,omitempty"`
	// OSUser is the user the servers run as (default postgres when Plinth
	// runs as root, else Plinth's own user).
	OSUser  string       `json:"os_user,omitempty"`
	Stanzas []FileStanza `json:"stanzas"`
}

// FileS3 is an S3-compatible bucket in a FileConfig.
type FileS3 struct {
	Endpoint string `json:"endpoint"`
	Bucket   string `json:"bucket"`
	Region   string `json:"region"`
	URIStyle string `json:"uri_style,omitempty"`
	// KeyFile holds the access key ID and SecretFile its secret.
	KeyFile     string `json:"key_file"`
	SecretFile  string `json:"secret_file"`
	NoVerifyTLS bool   `json:"no_verify_tls,omitempty"`
}

// FileStanza is one shard on this host: named as the shard is registered
// ("control" for the control database).
type FileStanza struct {
	Name      string `json:"name"`
	DataDir   string `json:"data_dir"`
	Port      int    `json:"port"`
	SocketDir string `json:"socket_dir"`
	User      string `json:"user,omitempty"` // a superuser, postgres by default
	// PasswordFile holds the user's password, if the server asks for one.
	PasswordFile string `json:"password_file,omitempty"`
}

// maxFileConfig bounds a configuration file.
const maxFileConfig = 1 << 20

// ParseFileConfig reads and checks a FileConfig: unknown fields, a missing
// or relative path, a bad stanza name or port, a stanza named twice, and
// both or neither of repo and s3 are refused.
func ParseFileConfig(data []byte) (FileConfig, error) {
	var fc FileConfig
	if len(data) > maxFileConfig {
		return fc, fmt.Errorf("backup config: larger than %d bytes", maxFileConfig)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return FileConfig{}, fmt.Errorf("backup config: %w", err)
	}
	if dec.More() {
		return FileConfig{}, errors.New("backup config: more than one JSON value")
	}
	return fc, fc.check()
}

func (fc FileConfig) check() error {
	abs := func(what, path string) error {
		if !filepath.IsAbs(path) || strings.ContainsAny(path, "\n\r\x00") {
			return fmt.Errorf("backup config: %s must be an absolute path, not %.80q", what, path)
		}
		return nil
	}
	if err := abs("home", fc.Home); err != nil {
		return err
	}
	if err := abs("key_file", fc.KeyFile); err != nil {
		return err
	}
	switch {
	case fc.Repo == "" && fc.S3 == nil:
		return errors.New("backup config: give the repository as repo (a directory) or s3 (a bucket)")
	case fc.S3 == nil:
		if err := abs("repo", fc.Repo); err != nil {
			return err
		}
	default:
		if fc.Repo != "" && !strings.HasPrefix(fc.Repo, "/") {
			return fmt.Errorf("backup config: the repository's path in the bucket must start with /, not %.80q", fc.Repo)
		}
		s := fc.S3
		for _, f := range [][2]string{{"s3.endpoint", s.Endpoint}, {"s3.bucket", s.Bucket}, {"s3.region", s.Region}} {
			if f[1] == "" || strings.ContainsAny(f[1], " \t\n\r\x00") {
				return fmt.Errorf("backup config: %s is required (one word)", f[0])
			}
		}
		if s.URIStyle != "" && s.URIStyle != "host" && s.URIStyle != "path" {
			return fmt.Errorf("backup config: s3.uri_style is host or path, not %.20q", s.URIStyle)
		}
		if err := abs("s3.key_file", s.KeyFile); err != nil {
			return err
		}
		if err := abs("s3.secret_file", s.SecretFile); err != nil {
			return err
		}
	}
	if fc.RetentionDays < 0 || fc.RetentionDays > 3650 {
		return errors.New("backup config: retention_days must be 1 to 3650")
	}
	if len(fc.Stanzas) == 0 {
		return errors.New("backup config: name at least one stanza (a shard on this host)")
	}
	seen := map[string]bool{}
	for i, st := range fc.Stanzas {
		if !stanzaName.MatchString(st.Name) {
			return fmt.Errorf("backup config: stanzas[%d]: %.63q is not a shard name", i, st.Name)
		}
		if seen[st.Name] {
			return fmt.Errorf("backup config: stanza %s is named twice", st.Name)
		}
		seen[st.Name] = true
		if err := abs("stanza "+st.Name+" data_dir", st.DataDir); err != nil {
			return err
		}
		if err := abs("stanza "+st.Name+" socket_dir", st.SocketDir); err != nil {
			return err
		}
		if st.Port < 1 || st.Port > 65535 {
			return fmt.Errorf("backup config: stanza %s: port %d is not a TCP port", st.Name, st.Port)
		}
		if st.User != "" && !stanzaName.MatchString(st.User) {
			return fmt.Errorf("backup config: stanza %s: %.63q is not a user name", st.Name, st.User)
		}
		if st.PasswordFile != "" {
			if err := abs("stanza "+st.Name+" password_file", st.PasswordFile); err != nil {
				return err
			}
		}
	}
	return nil
}

// Open reads the files fc names and returns its pgBackRest, with its
// configuration written.
func (fc FileConfig) Open() (*PgBackRest, error) {
	key, err := readSecret("key_file", fc.KeyFile)
	if err != nil {
		return nil, err
	}
	cfg := Config{Home: fc.Home, Repo: fc.Repo, CipherPass: key, RetentionDays: fc.RetentionDays}
	if s := fc.S3; s != nil {
		cfg.S3 = &S3{Endpoint: s.Endpoint, Bucket: s.Bucket, Region: s.Region, URIStyle: s.URIStyle, NoVerifyTLS: s.NoVerifyTLS}
		if cfg.S3.Key, err = readSecret("s3.key_file", s.KeyFile); err != nil {
			return nil, err
		}
		if cfg.S3.KeySecret, err = readSecret("s3.secret_file", s.SecretFile); err != nil {
			return nil, err
		}
	}
	if cfg.Cred, err = osUser(fc.OSUser); err != nil {
		return nil, err
	}
	var stanzas []Stanza
	for _, st := range fc.Stanzas {
		s := Stanza{Name: st.Name, DataDir: st.DataDir, Port: st.Port, SocketDir: st.SocketDir, User: st.User}
		if st.PasswordFile != "" {
			if s.Password, err = readSecret("stanza "+st.Name+" password_file", st.PasswordFile); err != nil {
				return nil, err
			}
		}
		stanzas = append(stanzas, s)
	}
	return New(cfg, stanzas...)
}

// readSecret reads a one-line secret from a file, naming the setting (not
// the secret) when it cannot.
func readSecret(what, path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("backup config: %s: %w", what, err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" || strings.ContainsAny(s, "\n\r") {
		return "", fmt.Errorf("backup config: %s must hold one non-empty line", what)
	}
	return s, nil
}

// osUser is the credential of the servers' OS user: name's, or when name
// is empty localpg.OSUser's (postgres when this process is root, which
// pgBackRest and Postgres refuse to run as; else this process's own, nil).
func osUser(name string) (*syscall.Credential, error) {
	if name == "" {
		return localpg.OSUser()
	}
	c, err := localpg.UserCredential(name)
	if err != nil {
		return nil, fmt.Errorf("backup config: os_user: %w", err)
	}
	if int(c.Uid) == os.Geteuid() {
		return nil, nil
	}
	return c, nil
}
