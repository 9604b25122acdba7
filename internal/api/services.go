package api

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/plinth-platform/plinth/internal/auth"
	"github.com/plinth-platform/plinth/internal/catalog"
)

// Registry timings.
const (
	// HeartbeatInterval is how often sidecars report in.
	HeartbeatInterval = 5 * time.Second
	// EndpointTTL is how long an instance counts as live after a heartbeat.
	EndpointTTL = 3 * HeartbeatInterval
	// KeyGrace is how long a rotated-out or stopped instance's key stays in
	// the repository: until no token signed with it can be valid.
	KeyGrace = auth.MaxLifetime + auth.Leeway
	// keyMaxAge is the Cache-Control max-age of the key repository.
	keyMaxAge = 60 * time.Second
)

// ServiceRequest is the body of POST /v1/services and PUT /v1/services/{name}.
type ServiceRequest struct {
	Name           string   `json:"name,omitempty"`
	AllowedCallers []string `json:"allowed_callers"`
	// Routes are path prefixes the edge sends to the service; Product is
	// the product whose tenant databases it serves.
	Routes           []string `json:"routes,omitempty"`
	Product          string   `json:"product,omitempty"`
	ReplayProtection bool     `json:"replay_protection,omitempty"`
	CallerRateLimit  int      `json:"caller_rate_limit,omitempty"`
	TenantRateLimit  int      `json:"tenant_rate_limit,omitempty"`
}

// ServiceCreated is a new service and its registration credential, shown
// this once.
type ServiceCreated struct {
	Service    catalog.Service `json:"service"`
	Credential string          `json:"credential"`
}

// RegisterInstanceRequest is how a sidecar registers itself and its key.
type RegisterInstanceRequest struct {
	ID        uuid.UUID `json:"id"`
	Address   string    `json:"address"`
	Kid       string    `json:"kid"`
	PublicKey string    `json:"public_key"`
}

// PublishKeyRequest publishes a new signing key of an instance.
type PublishKeyRequest struct {
	Kid       string `json:"kid"`
	PublicKey string `json:"public_key"`
}

// InstanceResponse answers registrations and heartbeats with the service's
// current configuration (allow-list, limits, key generation).
type InstanceResponse struct {
	InstanceID          uuid.UUID       `json:"instance_id"`
	HeartbeatIntervalMS int64           `json:"heartbeat_interval_ms"`
	Service             catalog.Service `json:"service"`
}

// Endpoints is the live instances of a service and a version that changes
// when they do. ReplayProtection tells callers to mint a token per request.
type Endpoints struct {
	Service          string             `json:"service"`
	Version          string             `json:"version"`
	ReplayProtection bool               `json:"replay_protection"`
	Endpoints        []catalog.Endpoint `json:"endpoints"`
}

// credentialPrefix starts every registration credential:
// plinthsvc_<service>_<secret>.
const credentialPrefix = "plinthsvc_"

// NewCredential makes a registration credential for service.
func NewCredential(service string) string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return credentialPrefix + service + "_" + base64.RawURLEncoding.EncodeToString(b)
}

// credentialService returns the service a credential claims to belong to.
func credentialService(cred string) string {
	rest, ok := strings.CutPrefix(cred, credentialPrefix)
	if !ok {
		return ""
	}
	svc, _, _ := strings.Cut(rest, "_")
	return svc
}

// authenticateService checks the request's credential. With service set it
// must be that service's; otherwise any service's (or the admin token).
func (s *Server) authenticateService(r *http.Request, service string) error {
	scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || cred == "" {
		return errorf(http.StatusUnauthorized, "credential_missing", "this endpoint needs a service credential: Authorization: Bearer <credential>")
	}
	claimed := credentialService(cred)
	if claimed == "" {
		if service == "" && s.authenticate(r) == nil {
			return nil // the admin token may read the registry
		}
		return errorf(http.StatusUnauthorized, "credential_invalid", "the credential is not valid")
	}
	ok, err := s.cfg.Store.CheckCredential(r.Context(), claimed, cred)
	if err != nil {
		return err
	}
	if !ok {
		return errorf(http.StatusUnauthorized, "credential_invalid", "the credential is not valid")
	}
	if service != "" && claimed != service {
		return errorf(http.StatusForbidden, "credential_wrong_service", "this credential belongs to another service")
	}
	return nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	svcs, err := s.store(r).ListServices(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, List[catalog.Service]{Items: svcs})
}

func (req ServiceRequest) params(name string) catalog.ServiceParams {
	return catalog.ServiceParams{Name: name, AllowedCallers: req.AllowedCallers, Routes: req.Routes, Product: req.Product,
		ReplayProtection: req.ReplayProtection,
		CallerRateLimit:  req.CallerRateLimit, TenantRateLimit: req.TenantRateLimit}
}

func (s *Server) createService(w http.ResponseWriter, r *http.Request) error {
	var req ServiceRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	cred := NewCredential(req.Name)
	var svc catalog.Service
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if svc, err = tx.CreateService(r.Context(), req.params(req.Name), catalog.HashCredential(cred)); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "service.create", TargetKind: "service",
			TargetID: svc.Name, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, ServiceCreated{Service: svc, Credential: cred})
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request) error {
	svc, err := s.store(r).GetService(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, svc)
}

func (s *Server) updateService(w http.ResponseWriter, r *http.Request) error {
	var req ServiceRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.Name != "" && req.Name != r.PathValue("name") {
		return catalog.Invalid("invalid_name", "the body names another service")
	}
	var svc catalog.Service
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if svc, err = tx.UpdateService(r.Context(), req.params(r.PathValue("name"))); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "service.update", TargetKind: "service",
			TargetID: svc.Name, RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, svc)
}

func (s *Server) rotateKeys(w http.ResponseWriter, r *http.Request) error {
	var svc catalog.Service
	err := s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		var err error
		if svc, err = tx.RotateKeys(r.Context(), r.PathValue("name")); err != nil {
			return err
		}
		return tx.Audit(r.Context(), catalog.AuditEntry{Actor: ActorAdmin, Action: "service.rotate_keys", TargetKind: "service",
			TargetID: svc.Name, ToState: fmt.Sprintf("generation %d", svc.KeyGeneration), RequestID: requestID(r)})
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, svc)
}

// checkKey parses a published key and checks that its kid belongs to service.
func checkKey(service, kid, pem string) (auth.PublicKey, error) {
	issuer, err := auth.ValidateKid(kid)
	if err != nil {
		return auth.PublicKey{}, catalog.Invalid("invalid_kid", "%v", err)
	}
	if issuer != service {
		return auth.PublicKey{}, catalog.Invalid("kid_not_owned_by_issuer", "a key of %s must have a kid starting with %s/", service, service)
	}
	k, err := auth.ParsePublicKeyPEM(kid, []byte(pem))
	if err != nil {
		return auth.PublicKey{}, catalog.Invalid("invalid_public_key", "%v", err)
	}
	return k, nil
}

func (s *Server) registerInstance(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.authenticateService(r, name); err != nil {
		return err
	}
	var req RegisterInstanceRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if u, err := url.Parse(req.Address); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(req.Address) > 500 {
		return catalog.Invalid("invalid_address", "address must be the http(s) URL the instance's sidecar listens on")
	}
	if req.ID == uuid.Nil {
		req.ID = uuid.Must(uuid.NewV7())
	}
	key, err := checkKey(name, req.Kid, req.PublicKey)
	if err != nil {
		return err
	}
	var svc catalog.Service
	err = s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		if err := tx.AddKey(r.Context(), name, key.Kid, string(key.Alg), string(key.PEM())); err != nil {
			return err
		}
		if err := tx.RegisterInstance(r.Context(), name, req.ID, req.Address, key.Kid); err != nil {
			return err
		}
		svc, err = tx.GetService(r.Context(), name)
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, InstanceResponse{InstanceID: req.ID, HeartbeatIntervalMS: HeartbeatInterval.Milliseconds(), Service: svc})
}

func (s *Server) instanceID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return uuid.Nil, catalog.NotFound("instance_not_found", "instance %q is not registered", truncate(r.PathValue("id"), 40))
	}
	return id, nil
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.authenticateService(r, name); err != nil {
		return err
	}
	id, err := s.instanceID(r)
	if err != nil {
		return err
	}
	found, err := s.store(r).Heartbeat(r.Context(), name, id)
	if err != nil {
		return err
	}
	if !found {
		return catalog.NotFound("instance_not_found", "instance %s is not registered: register again", id)
	}
	svc, err := s.store(r).GetService(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, InstanceResponse{InstanceID: id, HeartbeatIntervalMS: HeartbeatInterval.Milliseconds(), Service: svc})
}

func (s *Server) publishKey(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.authenticateService(r, name); err != nil {
		return err
	}
	id, err := s.instanceID(r)
	if err != nil {
		return err
	}
	var req PublishKeyRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	key, err := checkKey(name, req.Kid, req.PublicKey)
	if err != nil {
		return err
	}
	err = s.store(r).InTx(r.Context(), func(tx *catalog.Store) error {
		if err := tx.AddKey(r.Context(), name, key.Kid, string(key.Alg), string(key.PEM())); err != nil {
			return err
		}
		return tx.SetInstanceKey(r.Context(), name, id, key.Kid, KeyGrace)
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]string{"kid": key.Kid})
}

func (s *Server) deregisterInstance(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := s.authenticateService(r, name); err != nil {
		return err
	}
	id, err := s.instanceID(r)
	if err != nil {
		return err
	}
	if err := s.store(r).DeregisterInstance(r.Context(), name, id, KeyGrace); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// endpoints returns a service's live instances; with ?version=<v>&wait=<d>
// it waits (up to d) until the set differs from version v.
func (s *Server) endpoints(w http.ResponseWriter, r *http.Request) error {
	if err := s.authenticateService(r, ""); err != nil {
		return err
	}
	name := r.PathValue("name")
	svc, err := s.store(r).GetService(r.Context(), name)
	if err != nil {
		return err
	}
	wait, err := waitParam(r)
	if err != nil {
		return err
	}
	known := r.URL.Query().Get("version")
	deadline := time.Now().Add(wait)
	for {
		var changed <-chan struct{}
		cancel := func() {}
		if s.cfg.Notifier != nil {
			changed, cancel = s.cfg.Notifier.WaitChange()
		}
		eps, err := s.store(r).Endpoints(r.Context(), name, EndpointTTL)
		if err != nil {
			cancel()
			return err
		}
		out := Endpoints{Service: name, Version: endpointsVersion(eps, svc.ReplayProtection),
			ReplayProtection: svc.ReplayProtection, Endpoints: eps}
		if out.Version != known || !time.Now().Before(deadline) {
			cancel()
			return writeJSON(w, http.StatusOK, out)
		}
		select {
		case <-changed:
		case <-time.After(min(time.Until(deadline), time.Second)):
		case <-s.closing: // draining: answer with what is known now
			cancel()
			return writeJSON(w, http.StatusOK, out)
		case <-r.Context().Done():
			cancel()
			return r.Context().Err()
		}
		cancel()
	}
}

func endpointsVersion(eps []catalog.Endpoint, replay bool) string {
	h := sha256.New()
	fmt.Fprintf(h, "replay=%v;", replay)
	for _, e := range eps {
		fmt.Fprintf(h, "%s=%s;", e.ID, e.Address)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// keyCacheControl lets verifiers cache keys for a minute, or until the key
// expires if that is sooner.
func keyCacheControl(keys []catalog.ServiceKey) string {
	age := keyMaxAge
	for _, k := range keys {
		if k.ExpiresAt != nil {
			age = min(age, time.Until(*k.ExpiresAt))
		}
	}
	return fmt.Sprintf("public, max-age=%d", max(int(age.Seconds()), 0))
}

// issuerKeys serves an issuer's published keys as a JWKS.
func (s *Server) issuerKeys(w http.ResponseWriter, r *http.Request) error {
	issuer := r.PathValue("issuer")
	keys, err := s.store(r).Keys(r.Context(), issuer)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return catalog.NotFound("key_not_found", "no keys published for %q", truncate(issuer, 40))
	}
	set := auth.JWKS{Keys: []auth.JWK{}}
	for _, k := range keys {
		pub, err := auth.ParsePublicKeyPEM(k.Kid, []byte(k.PublicKey))
		if err != nil {
			continue
		}
		set.Keys = append(set.Keys, pub.JWK())
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", keyCacheControl(keys))
	return encodeJSON(w, set)
}

// publicKey serves one key as PEM, where ASAP verifiers look for it:
// <repository>/<issuer>/<key-name>.
func (s *Server) publicKey(w http.ResponseWriter, r *http.Request) error {
	k, err := s.store(r).Key(r.Context(), r.PathValue("issuer")+"/"+r.PathValue("keyname"))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", keyCacheControl([]catalog.ServiceKey{k}))
	_, err = w.Write([]byte(k.PublicKey))
	return err
}

// waitParam reads ?wait=<duration>, at most maxWait.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > maxWait {
		return 0, catalog.Invalid("invalid_wait", "wait must be a duration between 0s and %s, such as 30s", maxWait)
	}
	return d, nil
}
