//! Redis for tests: a `redis-server`, or a 3-master Redis Cluster made with
//! `redis-cli --cluster create`, on free ports of 127.0.0.1 in a temp dir
//! (never the machine's own Redis), killed when dropped.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (`scripts/test` installs
//! them). Blocking calls: use them from test set-up, not from hot paths.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{RedisOptions, RedisUrl};

/// A port of 127.0.0.1 that is free now, and whose cluster bus port
/// (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..30_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// Sends one inline command and returns the first reply line.
fn ask(port: u16, password: Option<&str>, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    if let Some(p) = password {
        line.push_str(&format!("AUTH {p}\r\n"));
    }
    line.push_str(command);
    line.push_str("\r\n");
    s.write_all(line.as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let want_lines = if password.is_some() { 2 } else { 1 };
    while got.iter().filter(|&&b| b == b'\n').count() < want_lines {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    text.lines().last().map(str::to_string)
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    password: Option<String>,
    extra: Vec<String>,
    /// Serving TLS only (`rediss://`), with a CA made for the test.
    tls: bool,
    child: Option<Child>,
}

/// Makes a CA and a certificate for 127.0.0.1 it signs, with `openssl`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl on the PATH");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=switchboard-test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

impl RedisServer {
    /// A server with AOF `appendfsync always`, so what it acknowledged
    /// survives a SIGKILL.
    pub fn start() -> Self {
        Self::start_with(None, &[])
    }

    /// With `requirepass`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password), &[])
    }

    pub fn start_with(password: Option<&str>, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            password: password.map(str::to_string),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: false,
            child: None,
        };
        server.spawn_on_a_free_port();
        server
    }

    fn spawn_on_a_free_port(&mut self) {
        for _ in 0..5 {
            if self.spawn() {
                return;
            }
            self.child = None;
            self.port = free_port();
        }
        panic!("redis-server would not start");
    }

    /// Serving `rediss://` only, with a password, its certificate signed by
    /// a CA made for the test ([`RedisServer::tls_root_cert`]).
    pub fn start_tls(password: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        make_certificates(dir.path());
        let mut server = RedisServer {
            dir,
            port: free_port(),
            password: Some(password.to_string()),
            extra: Vec::new(),
            tls: true,
            child: None,
        };
        server.spawn_on_a_free_port();
        server
    }

    /// The test CA's certificate (PEM), for a TLS server.
    pub fn tls_root_cert(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("ca.crt")
    }

    /// Starts the process; whether it came up on its port.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.arg("--requirepass").arg(p);
        }
        if self.tls {
            cmd.args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
                .current_dir(self.dir.path());
        }
        let mut child = cmd.spawn().expect("redis-server on the PATH");
        let (port, password) = (self.port, self.password.clone());
        let ca = self.tls.then(|| self.dir.path().join("ca.crt"));
        let deadline = Instant::now() + Duration::from_secs(15);
        let up = loop {
            let pong = match &ca {
                Some(ca) => {
                    let ca = ca.to_string_lossy();
                    cli(
                        port,
                        password.as_deref(),
                        &["--tls", "--cacert", &ca, "ping"],
                    )
                    .trim()
                        == "PONG"
                }
                None => ask(port, password.as_deref(), "PING").is_some_and(|r| r == "+PONG"),
            };
            if pong {
                break true;
            }
            // It exited: most likely another test took the port meanwhile.
            if matches!(child.try_wait(), Ok(Some(_))) {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for redis-server"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = Some(child);
        up
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's read system calls so far (`syscr` of `/proc/<pid>/io`):
    /// commands sent together (pipelined) arrive in one read.
    pub fn read_calls(&self) -> u64 {
        self.proc_field("io", |text| {
            text.lines()
                .find_map(|l| l.strip_prefix("syscr: "))
                .and_then(|n| n.trim().parse().ok())
        })
    }

    /// CPU time the server used so far (user + system, from `/proc/<pid>/stat`).
    pub fn cpu_time(&self) -> Duration {
        let ticks = self.proc_field("stat", |text| {
            // Fields after the command name, which ends with the last ')'.
            let rest = text.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        });
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    fn proc_field(&self, file: &str, read: impl FnOnce(&str) -> Option<u64>) -> u64 {
        let pid = self.child.as_ref().map(Child::id).expect("server running");
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).expect("/proc readable");
        read(&text).expect("field present")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Options for a node named `node` on this server, with test-sized timings.
    pub fn options(&self, node: &str) -> RedisOptions {
        let mut o = quick(RedisOptions::new(RedisUrl::Single(self.url()), node));
        if self.tls {
            o.tls_root_cert = Some(self.tls_root_cert());
        }
        o
    }

    /// SIGKILL: no shutdown, no final save (AOF keeps what was acknowledged).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not come back on its port");
    }

    /// Runs `redis-cli` against it; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        if self.tls {
            let ca = self.dir.path().join("ca.crt");
            let ca = ca.to_string_lossy();
            let with_tls = [&["--tls", "--cacert", &*ca][..], args].concat();
            return cli(self.port, self.password.as_deref(), &with_tls);
        }
        cli(self.port, self.password.as_deref(), args)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(p) = password {
        cmd.args(["--no-auth-warning", "-a", p]);
    }
    let out = cmd.args(args).output().expect("redis-cli on the PATH");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Test-sized timings: quick probes and presence expiry.
fn quick(mut o: RedisOptions) -> RedisOptions {
    o.stall_timeout = Duration::from_secs(2);
    o.probe_interval = Duration::from_millis(200);
    o.response_timeout = Duration::from_secs(2);
    o.connect_timeout = Duration::from_secs(1);
    o.presence_ttl = Duration::from_secs(2);
    o
}

/// A Redis Cluster of three masters, one slot range each, with or without
/// replicas.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    /// How long creating it took.
    pub created_in: Duration,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> Self {
        Self::start_with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (for failover tests).
    pub fn start_with_replicas(replicas: usize) -> Self {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for &port in &ports {
            let d: PathBuf = dir.path().join(port.to_string());
            std::fs::create_dir_all(&d).expect("node dir");
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", "nodes.conf", "--daemonize", "no"])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on the PATH");
            children.push(Some(child));
        }
        for &port in &ports {
            wait_until("cluster node", || {
                ask(port, None, "PING").is_some_and(|r| r == "+PONG")
            });
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli on the PATH");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mut cluster = RedisCluster {
            dir,
            ports,
            children,
            created_in: Duration::ZERO,
        };
        cluster.wait_ok();
        for &port in &cluster.ports {
            if cluster.role(port) == "slave" {
                wait_until("replica in sync", || {
                    cli(port, None, &["info", "replication"]).contains("master_link_status:up")
                });
            }
        }
        cluster.created_in = started.elapsed();
        cluster
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        for port in self.live_ports() {
            wait_until("cluster_state:ok", || {
                cli(port, None, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
    }

    /// `master` or `slave`.
    pub fn role(&self, port: u16) -> String {
        cli(port, None, &["role"])
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Makes a replica take over its master's slots (`CLUSTER FAILOVER`, the
    /// graceful kind: no acknowledged write is lost). Returns the new master.
    pub fn failover(&self) -> u16 {
        let replica = self
            .live_ports()
            .find(|&p| self.role(p) == "slave")
            .expect("a replica");
        cli(replica, None, &["cluster", "failover"]);
        wait_until("the replica promoted", || self.role(replica) == "master");
        self.wait_ok();
        replica
    }

    /// SIGKILLs a master that has a replica; its replica takes over after
    /// the node timeout (1 s). Returns the killed master's port.
    pub fn kill_a_master(&mut self) -> u16 {
        let replica = self
            .live_ports()
            .find(|&p| self.role(p) == "slave")
            .expect("a replica");
        let master: u16 = cli(replica, None, &["info", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix("master_port:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("the replica's master");
        let at = self.ports.iter().position(|&p| p == master).expect("ours");
        if let Some(mut c) = self.children[at].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_until("the replica promoted", || self.role(replica) == "master");
        master
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn options(&self, node: &str) -> RedisOptions {
        quick(RedisOptions::new(RedisUrl::Cluster(self.urls()), node))
    }

    /// Runs `redis-cli` against the node at `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli(port, None, args)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for mut c in self.children.iter_mut().filter_map(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
