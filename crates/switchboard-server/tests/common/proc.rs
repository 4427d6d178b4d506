//! The `switchboard` binary as a separate process, and what it costs the
//! machine: resident memory and CPU time read from `/proc/<pid>`, so a test
//! can bound what an attack makes the server spend, not only what it answers.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A running `switchboard serve` with its own config file.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// Holds the config file (and any data) until the process is gone.
    pub dir: tempfile::TempDir,
    logs: Option<std::thread::JoinHandle<String>>,
}

impl ServerProcess {
    /// Starts the binary on `config_toml` (written to a file; `listen` is
    /// forced to port 0) plus `envs`, and waits for its listening line.
    pub fn start(config_toml: &str, envs: &[(&str, &str)]) -> ServerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("switchboard.toml");
        let mut f = std::fs::File::create(&path).expect("config file");
        f.write_all(config_toml.as_bytes()).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .env_clear()
            .env("SWITCHBOARD_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn switchboard");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .expect("utf8");
            if let Some(a) = line.strip_prefix("listening on http://") {
                break a.parse().expect("address");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let stderr = child.stderr.take().expect("stderr");
        let logs = std::thread::spawn(move || {
            let mut s = String::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        ServerProcess {
            child,
            addr,
            dir,
            logs: Some(logs),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// User + system CPU time spent so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Kills the process and returns what it logged.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// utime + stime of a process (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A config for a process-level test: known secret and key, a `chat`
/// namespace with everything on. Append more TOML after it as needed
/// (sections must come after these top-level keys).
pub fn base_config() -> String {
    format!(
        r#"
[auth]
hmac_secret = "{secret}"

[api]
key = "{key}"

# A stop drains at once: tests that stop a node wait for nothing.
[shutdown]
ready_grace = "0s"

[[namespaces]]
name = "chat"
publish = true
presence = true
join_leave = true
history_size = 100
history_ttl = "10m"
"#,
        secret = super::SECRET,
        key = super::API_KEY,
    )
}

/// The binary serving a config file with only the given secrets in its
/// environment, and the address it printed (port 0 in the file).
pub fn serve_file(
    config: &std::path::Path,
    secret: &str,
    api_key: &str,
) -> (KillOnDrop, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env_clear()
        .env("SWITCHBOARD_AUTH_HMAC_SECRET", secret)
        .env("SWITCHBOARD_API_KEY", api_key)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    // Killed on drop from here: a failed read below leaves no server behind.
    let child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("a line").expect("utf8");
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.parse().expect("addr");
        }
    };
    (child, addr)
}

/// A child process that is killed and reaped when dropped, so a failed
/// assertion never leaves a server running into the next test run.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
