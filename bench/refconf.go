package bench

import (
	"fmt"
	"strings"
)

// The reference proxies' configuration files. Both topologies mirror two
// sidecars: hop1 takes plain HTTP/1.1 from the load on loopback and keeps a pool
// of TLS 1.3 connections to hop2, presenting a client certificate; hop2 requires
// and verifies it, and keeps a pool of plain HTTP/1.1 connections to the app.
// One worker (nginx) or thread (haproxy) per hop, no access log, connections
// reused without a per-connection request limit (as Go's pools do).

// hopConfig is what one reference hop's file needs.
type hopConfig struct {
	// Dir is the hop's own directory: prefix, pid file, error log, temp files.
	Dir string
	// Listen is the hop's 127.0.0.1:port; Upstream the next hop or the app.
	Listen, Upstream string
	// TLSIn makes the hop terminate mutual TLS (hop2); TLSOut makes it
	// originate it (hop1).
	TLSIn, TLSOut bool
	PKI           pkiFiles
}

// nginxConfig renders nginx.conf for one hop.
func nginxConfig(h hopConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# One hop of nginx-2hop, written by the trellis benchmark harness.
daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;

    upstream next {
        server %[2]s;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }

    server {
`, h.Dir, h.Upstream)
	if h.TLSIn {
		fmt.Fprintf(&b, `        listen %s ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
`, h.Listen, h.PKI.ServerCert, h.PKI.ServerKey, h.PKI.CA)
	} else {
		fmt.Fprintf(&b, "        listen %s;\n", h.Listen)
	}
	b.WriteString(`
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
`)
	if h.TLSOut {
		fmt.Fprintf(&b, `            proxy_pass https://next;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate %s;
            proxy_ssl_certificate_key %s;
            proxy_ssl_trusted_certificate %s;
            proxy_ssl_verify on;
            proxy_ssl_name %s;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
`, h.PKI.ClientCert, h.PKI.ClientKey, h.PKI.CA, serverName)
	} else {
		b.WriteString("            proxy_pass http://next;\n")
	}
	b.WriteString("        }\n    }\n}\n")
	return b.String()
}

// haproxyConfig renders haproxy.cfg for one hop.
func haproxyConfig(h hopConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# One hop of haproxy-2hop, written by the trellis benchmark harness.
global
    nbthread 1
    maxconn 4096
    pidfile %s/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s

frontend in
`, h.Dir)
	if h.TLSIn {
		fmt.Fprintf(&b, "    bind %s ssl crt %s ca-file %s verify required\n", h.Listen, h.PKI.ServerPEM, h.PKI.CA)
	} else {
		fmt.Fprintf(&b, "    bind %s\n", h.Listen)
	}
	b.WriteString("    default_backend next\n\nbackend next\n")
	if h.TLSOut {
		fmt.Fprintf(&b, "    server hop2 %s ssl crt %s ca-file %s verify required verifyhost %s sni str(%s)\n",
			h.Upstream, h.PKI.ClientPEM, h.PKI.CA, serverName, serverName)
	} else {
		fmt.Fprintf(&b, "    server app %s\n", h.Upstream)
	}
	return b.String()
}
