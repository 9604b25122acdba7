package catalog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Notifier listens for operations finishing (plinth_operations) and for
// catalog changes (plinth_changes), both sent by triggers at commit, and
// wakes whoever waits on them, so that `--wait` and long polls answer within
// milliseconds without polling the database. Waiters still poll now and
// then, so a lost connection costs latency, never a missed event.
type Notifier struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	mu      sync.Mutex
	waiters map[string][]chan struct{}
}

// NewNotifier returns a Notifier; Run starts listening.
func NewNotifier(pool *pgxpool.Pool, logger *slog.Logger) *Notifier {
	return &Notifier{pool: pool, log: logger, waiters: map[string][]chan struct{}{}}
}

// Run listens until ctx ends, reconnecting after errors.
func (n *Notifier) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := n.listen(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("operation notifier lost its connection; reconnecting", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (n *Notifier) listen(ctx context.Context) error {
	conn, err := n.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN plinth_operations; LISTEN plinth_changes`); err != nil {
		return err
	}
	// The connection goes back to the pool afterwards: stop listening first.
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `UNLISTEN *`) }()
	for {
		msg, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return err
		}
		key := changesKey
		if msg.Channel == "plinth_operations" {
			key = "op:" + msg.Payload
		}
		n.mu.Lock()
		for _, ch := range n.waiters[key] {
			close(ch)
		}
		delete(n.waiters, key)
		n.mu.Unlock()
	}
}

const changesKey = "changes"

// WaitOperation returns a channel closed when the operation id finishes.
// Call cancel when no longer waiting.
func (n *Notifier) WaitOperation(id string) (done <-chan struct{}, cancel func()) {
	return n.wait("op:" + id)
}

// WaitChange returns a channel closed at the next catalog commit that
// changes anything. Call cancel when no longer waiting.
func (n *Notifier) WaitChange() (done <-chan struct{}, cancel func()) {
	return n.wait(changesKey)
}

func (n *Notifier) wait(id string) (done <-chan struct{}, cancel func()) {
	ch := make(chan struct{})
	n.mu.Lock()
	n.waiters[id] = append(n.waiters[id], ch)
	n.mu.Unlock()
	return ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		ws := n.waiters[id]
		for i, w := range ws {
			if w == ch {
				n.waiters[id] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(n.waiters[id]) == 0 {
			delete(n.waiters, id)
		}
	}
}
