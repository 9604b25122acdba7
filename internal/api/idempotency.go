package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net/http"

	"github.com/plinth-platform/plinth/internal/catalog"
)

// idempotent runs a state-changing handler under an Idempotency-Key: the
// key is claimed, the handler's catalog writes are made and its response is
// stored, all in one transaction. A retry with the same key and request gets
// the stored response (marked Idempotent-Replayed); the same key with a
// different request is refused; a concurrent request with the same key waits
// for the first to finish. Failed requests store nothing, so they can be
// retried with the same key.
func (s *Server) idempotent(w http.ResponseWriter, r *http.Request, h handlerFunc) error {
	key := r.Header.Get(headerIdempotencyKey)
	if len(key) > 255 || !printableASCII(key) {
		return errorf(http.StatusBadRequest, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters")
	}
	body, err := io.ReadAll(r.Body)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the body is larger than %d bytes", tooBig.Limit)
	}
	if err != nil {
		return errorf(http.StatusBadRequest, "bad_body", "could not read the body")
	}
	fp := sha256.New()
	fp.Write([]byte(r.Method + "\n" + r.URL.Path + "\n"))
	fp.Write(body)
	r.Body = io.NopCloser(bytes.NewReader(body))

	buf := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
	var replay *catalog.StoredResponse
	err = s.cfg.Store.InTx(r.Context(), func(tx *catalog.Store) error {
		stored, err := tx.ClaimIdempotencyKey(r.Context(), key, fp.Sum(nil))
		if err != nil || stored != nil {
			replay = stored
			return err
		}
		if err := h(buf, r.WithContext(context.WithValue(r.Context(), ctxStore, tx))); err != nil {
			return err
		}
		return tx.SaveIdempotentResponse(r.Context(), key, buf.status, buf.body.Bytes())
	})
	if err != nil {
		return err
	}
	if replay != nil {
		w.Header().Set("Idempotent-Replayed", "true")
		return writeRaw(w, replay.Status, replay.Body)
	}
	for k, v := range buf.header {
		w.Header()[k] = v
	}
	w.WriteHeader(buf.status)
	_, err = w.Write(buf.body.Bytes())
	return err
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return s != ""
}

func writeRaw(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(append(body, '\n'))
	return err
}

// bufferedResponse holds a handler's response until its transaction commits.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }
