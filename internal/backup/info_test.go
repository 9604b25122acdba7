package backup

import (
	"strings"
	"testing"
)

// A real `pgbackrest info --output=json` (2.45), one full backup.
const infoJSON = `[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000003","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":23213752,"repository":{"delta":2848720,"size":2848720},"size":23213752},"label":"20261206-194252F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796586172,"stop":1796586184},"type":"full"}],"cipher":"aes-256-cbc","db":[{"id":1,"repo-key":1,"system-id":7716278816574974082,"version":"15"}],"name":"s1","repo":[{"cipher":"aes-256-cbc","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]`

func TestParseInfo(t *testing.T) {
	infos, err := ParseInfo([]byte(infoJSON))
	if err != nil {
		t.Fatal(err)
	}
	in := infos[0]
	b, ok := in.Latest()
	if len(infos) != 1 || in.Name != "s1" || in.Status != "ok" || !ok || b.Type != Full || b.Label != "20261206-194252F" ||
		b.RepoSize != 2848720 || b.Size != 23213752 || b.Stop.Sub(b.Start).Seconds() != 12 || in.ArchiveMax != "000000010000000000000003" {
		t.Fatalf("parsed %+v", infos)
	}
	for _, tt := range []struct{ name, in, want string }{
		{"not JSON", `{`, "unexpected"},
		{"an object", `{}`, "cannot unmarshal"},
		{"no status", `[{"name":"s1"}]`, "without a name or status"},
		{"unknown type", strings.Replace(infoJSON, `"type":"full"`, `"type":"weekly"`, 1), "unknown type"},
		{"stop before start", strings.Replace(infoJSON, `"stop":1796586184`, `"stop":1`, 1), "malformed"},
	} {
		if _, err := ParseInfo([]byte(tt.in)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	// A stanza with no backups yet, and a bad status.
	infos, err = ParseInfo([]byte(`[{"name":"s2","status":{"code":2,"message":"no valid backups"},"backup":[],"archive":[]}]`))
	if err != nil || infos[0].Status != "no valid backups" {
		t.Fatalf("%+v %v", infos, err)
	}
	if _, ok := infos[0].Latest(); ok {
		t.Fatal("a latest backup where there is none")
	}
	if err := infos[0].Unreadable(); err != nil {
		t.Fatalf("a stanza without a backup yet is readable: %v", err)
	}
	// pgBackRest with the wrong key quotes the bytes it decrypted, control
	// bytes included: still parsed, and unreadable, without the bytes.
	wrongKey := "[{\"archive\":[],\"backup\":[],\"name\":\"s3\",\"repo\":[{\"status\":{\"code\":99,\"message\":\"[FormatError] unable to load info file 'backup.info':\\nFormatError: key/value found outside of section at line 1: \x03\x93\xf1\t\x18\"}}],\"status\":{\"code\":99,\"message\":\"other\"}}]"
	infos, err = ParseInfo([]byte(wrongKey))
	if err != nil {
		t.Fatalf("the wrong key's output: %v", err)
	}
	err = infos[0].Unreadable()
	if err == nil || !strings.Contains(err.Error(), "key is wrong") || strings.ContainsAny(err.Error(), "\x03\x18") {
		t.Fatalf("the wrong key's status: %v", err)
	}
}

func FuzzParseInfo(f *testing.F) {
	f.Add([]byte(infoJSON))
	f.Add([]byte(`[{"name":"s2","status":{"code":2,"message":"x"}}]`))
	f.Add([]byte("[{\"name\":\"s3\",\"repo\":[{\"status\":{\"message\":\"a\\nb\x03\"}}],\"status\":{\"code\":99}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		infos, err := ParseInfo(data)
		if err != nil {
			return
		}
		for _, in := range infos {
			for _, b := range in.Backups {
				if b.Stop.Before(b.Start) || b.Size < 0 || b.Label == "" {
					t.Fatalf("accepted a malformed backup %+v", b)
				}
			}
		}
	})
}
