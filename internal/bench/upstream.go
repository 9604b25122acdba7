package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// EchoServer is the upstream every proxy benchmark puts behind the proxy:
// a plain net/http service that answers each request with its body.
type EchoServer struct {
	Addr string
	srv  *http.Server
}

// StartEcho starts an echo server on a free loopback port.
func StartEcho() (*EchoServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return &EchoServer{Addr: l.Addr().String(), srv: srv}, nil
}

// Close stops the server.
func (e *EchoServer) Close() { _ = e.srv.Close() }

// Nginx is nginx with one worker proxying to an upstream over keep-alive
// connections: the reference proxy of the benchmarks.
type Nginx struct {
	Addr string
	dir  string
	cmd  *exec.Cmd
}

// ErrNoNginx means nginx is not installed.
var ErrNoNginx = errors.New("nginx is not installed (Debian: apt install nginx-light); its row is left out")

// StartNginx starts nginx with one worker in front of upstream.
func StartNginx(ctx context.Context, upstream string) (*Nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return nil, ErrNoNginx
		}
		bin = "/usr/sbin/nginx"
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "plinth-nginx-")
	if err != nil {
		return nil, err
	}
	_ = os.Chmod(dir, 0o777) // the worker may run as another user
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  upstream backend { server %[2]s; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:%[3]d;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, upstream, port)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "-c", path, "-p", dir)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &Nginx{Addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir, cmd: cmd}
	if err := waitListening(n.Addr); err != nil {
		n.Close()
		return nil, fmt.Errorf("nginx did not start: %w (see %s/error.log)", err, dir)
	}
	return n, nil
}

// WorkerPID is the pid of nginx's one worker process (0 when unknown).
func (n *Nginx) WorkerPID() int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", n.cmd.Process.Pid, n.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.Fields(string(data) + " 0")[0]))
	return pid
}

// Close stops nginx.
func (n *Nginx) Close() {
	if n.cmd.Process != nil {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
	}
	_ = os.RemoveAll(n.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.New("nothing listens on " + addr)
}
