//! nginx from Debian's package serving the shipped `deploy/nginx-switchboard.conf`
//! as a user would, unprivileged, in a temp dir. The copy differs from the
//! shipped file only where a test must differ: the nodes' addresses, the
//! listen port, the certificate paths, and (when asked) `proxy_read_timeout`.
//! Everything else nginx needs to run as an ordinary process (pid file, logs,
//! temp dirs) goes in a small `nginx.conf` around it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_rustls::rustls::pki_types::CertificateDer;

use super::client::Endpoint;

const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/nginx-switchboard.conf"
);

/// The upstream lines of the shipped file, in order; each becomes a test node.
const SHIPPED_NODES: [&str; 2] = ["server 127.0.0.1:8001 ", "server 127.0.0.1:8002 "];

/// A running nginx, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Site {
    pub endpoint: Endpoint,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// `text` with `from` replaced by `to`, which must occur exactly `times` times:
/// a shipped file that changed shape fails here, not silently.
fn replace(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "deploy/nginx-switchboard.conf no longer has {times} × {from:?}; update tests/nginx/site.rs"
    );
    text.replace(from, to)
}

/// The shipped site with the test's values.
fn render(
    shipped: &str,
    nodes: &[SocketAddr],
    port: u16,
    dir: &Path,
    read_timeout: Option<Duration>,
) -> String {
    assert_eq!(
        nodes.len(),
        SHIPPED_NODES.len(),
        "one node per upstream line"
    );
    let mut site = shipped.to_string();
    for (line, node) in SHIPPED_NODES.iter().zip(nodes) {
        site = replace(&site, line, &format!("server {node} "), 1);
    }
    site = replace(
        &site,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;"),
        1,
    );
    site = replace(
        &site,
        "/etc/ssl/certs/rt.example.com.pem;",
        &format!("{};", dir.join("site.crt").display()),
        1,
    );
    site = replace(
        &site,
        "/etc/ssl/private/rt.example.com.key;",
        &format!("{};", dir.join("site.key").display()),
        1,
    );
    if let Some(t) = read_timeout {
        // Both long-lived locations, /ws and /sse.
        site = replace(
            &site,
            "proxy_read_timeout 3600s;",
            &format!("proxy_read_timeout {}s;", t.as_secs()),
            2,
        );
    }
    site
}

/// The main config around the site: what nginx needs to run from `dir`.
fn main_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         access_log {d}/access.log;\n\
         client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         include {d}/switchboard.conf;\n\
         }}\n"
    )
}

/// A CA made for the test and a certificate for 127.0.0.1 it signed, written
/// where the rendered site points; the CA's DER for the clients.
fn make_certificate(dir: &Path) -> CertificateDer<'static> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchboard nginx test CA");
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("site key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("site certificate");
    std::fs::write(dir.join("site.crt"), cert.pem() + &ca.pem()).expect("write certificate");
    std::fs::write(dir.join("site.key"), key.serialize_pem()).expect("write key");
    ca.der().clone()
}

/// Debian's nginx: /usr/sbin is not on every user's PATH.
fn nginx_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        return sbin;
    }
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|c| c.exists())
    });
    found.unwrap_or_else(|| {
        panic!("nginx is not installed: `apt-get install nginx` (scripts/test installs it)")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Site {
    /// nginx in front of `nodes` (one per upstream line of the shipped
    /// file), with the shipped `proxy_read_timeout` or `read_timeout`.
    pub fn start(nodes: &[SocketAddr], read_timeout: Option<Duration>) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = make_certificate(dir.path());
        let shipped = std::fs::read_to_string(SHIPPED).expect("deploy/nginx-switchboard.conf");
        std::fs::write(dir.path().join("nginx.conf"), main_conf(dir.path())).expect("write");
        // The port was free a moment ago; another test may take it first.
        for _ in 0..5 {
            let port = free_port();
            let site = render(&shipped, nodes, port, dir.path(), read_timeout);
            std::fs::write(dir.path().join("switchboard.conf"), site).expect("write site");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if let Some(child) = spawn(dir.path(), addr) {
                return Site {
                    endpoint: Endpoint::new(addr, ca),
                    dir,
                    child: Some(child),
                };
            }
        }
        panic!("nginx would not start: {}", read(dir.path(), "error.log"));
    }

    /// nginx's error log so far, for failure messages.
    pub fn error_log(&self) -> String {
        read(self.dir.path(), "error.log")
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// Starts nginx in the foreground; `None` if it exited because the port was
/// taken, a panic with its log for any other failure.
fn spawn(dir: &Path, addr: SocketAddr) -> Option<Child> {
    let mut child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        // Before it reads the config nginx logs to its compiled-in path.
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = read(dir, "error.log");
            assert!(
                log.contains("Address already in use"),
                "nginx exited ({status}): {log}"
            );
            return None;
        }
        if TcpStream::connect(addr).is_ok() {
            return Some(child);
        }
        assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM lets the master take its workers down with it; a SIGKILL
        // would leave them holding the port.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_site_differs_from_the_shipped_one_only_where_a_test_must() {
        let shipped = std::fs::read_to_string(SHIPPED).expect("shipped");
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:41001".parse().expect("addr"),
            "127.0.0.1:41002".parse().expect("addr"),
        ];
        let dir = Path::new("/tmp/site");
        let site = render(&shipped, &nodes, 41443, dir, None);
        let changed: Vec<(&str, &str)> = shipped
            .lines()
            .zip(site.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(shipped.lines().count(), site.lines().count());
        assert_eq!(changed.len(), 5, "{changed:#?}");
        assert!(site.contains("server 127.0.0.1:41001 max_fails"), "{site}");
        assert!(site.contains("listen 127.0.0.1:41443 ssl;"), "{site}");
        assert!(site.contains("proxy_read_timeout 3600s;"), "{site}");
        let short = render(&shipped, &nodes, 41443, dir, Some(Duration::from_secs(3)));
        assert_eq!(short.matches("proxy_read_timeout 3s;").count(), 2);
    }
}
