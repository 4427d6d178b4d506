//! Server CPU and memory, read from `/proc/<pid>/stat` and `/proc/<pid>/status`.
//!
//! CPU is the process total of `/proc/<pid>/stat` (`utime + stime`, every thread,
//! live or reaped), in clock ticks of `USER_HZ`, which Linux fixes at 100 for
//! everything it exports through /proc: a resolution of 10 ms, coarse for a short
//! phase. So the sum of the threads' `/proc/<pid>/task/*/schedstat` run times
//! (nanoseconds) is read alongside and used instead, unless the tick count says
//! more CPU was used than it shows (a thread that exited takes its schedstat with
//! it, but not its ticks).

use std::fs;
use std::io;

/// Ticks per second of the utime/stime fields (USER_HZ; 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// User and system time of a process, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    pub utime: u64,
    pub stime: u64,
}

impl CpuTicks {
    pub fn total(self) -> u64 {
        self.utime + self.stime
    }

    /// CPU seconds between `earlier` and `self`.
    pub fn seconds_since(self, earlier: CpuTicks) -> f64 {
        self.total().saturating_sub(earlier.total()) as f64 / USER_HZ
    }
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// The second field (`comm`) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the *last* `)`. After it come field 3
/// (`state`) onwards; `utime` and `stime` are fields 14 and 15.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // fields[0] is field 3 (state), so field 14 is at index 11.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some(CpuTicks { utime, stime })
}

/// The first field of a `schedstat` file: time spent on the CPU, in nanoseconds.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub ticks: CpuTicks,
    /// Sum of the live threads' run times (ns), when schedstat is available.
    pub runtime_ns: Option<u64>,
}

impl CpuSample {
    /// Two processes' readings as one (the nodes of one gateway).
    pub fn plus(self, other: CpuSample) -> CpuSample {
        CpuSample {
            ticks: CpuTicks {
                utime: self.ticks.utime + other.ticks.utime,
                stime: self.ticks.stime + other.ticks.stime,
            },
            runtime_ns: self.runtime_ns.zip(other.runtime_ns).map(|(a, b)| a + b),
        }
    }

    /// CPU seconds between `earlier` and `self`: the nanosecond run times unless the
    /// ticks show more than 30 ms beyond them.
    pub fn seconds_since(self, earlier: CpuSample) -> f64 {
        let coarse = self.ticks.seconds_since(earlier.ticks);
        match (self.runtime_ns, earlier.runtime_ns) {
            (Some(now), Some(then)) if now >= then => {
                let fine = (now - then) as f64 / 1e9;
                if coarse > fine + 0.03 { coarse } else { fine }
            }
            _ => coarse,
        }
    }
}

/// Reads a `kB` value (e.g. `VmRSS`, `VmHWM`, `RssAnon`) from `/proc/<pid>/status` text.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut parts = rest.split_ascii_whitespace();
        let value = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(value)
    })
}

/// Memory of the server process, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
}

impl Memory {
    /// Two processes' memory as one (the nodes of one gateway).
    pub fn plus(self, other: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib + other.rss_kib,
            hwm_kib: self.hwm_kib + other.hwm_kib,
            anon_kib: self.anon_kib + other.anon_kib,
        }
    }
}

/// The server under test, by pid.
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pid: u32,
}

impl ServerProbe {
    pub fn new(pid: u32) -> Self {
        ServerProbe { pid }
    }

    pub fn cpu(&self) -> io::Result<CpuSample> {
        let text = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let ticks =
            parse_stat(&text).ok_or_else(|| io::Error::other("unparseable /proc/<pid>/stat"))?;
        Ok(CpuSample {
            ticks,
            runtime_ns: self.thread_runtime_ns(),
        })
    }

    fn thread_runtime_ns(&self) -> Option<u64> {
        let mut total = 0;
        for task in fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
            let mut path = task.ok()?.path();
            path.push("schedstat");
            // A thread may exit between listing and reading: it then counts as nothing.
            if let Ok(text) = fs::read_to_string(&path) {
                total += parse_schedstat(&text)?;
            }
        }
        Some(total)
    }

    pub fn memory(&self) -> io::Result<Memory> {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let get = |key| parse_status_kib(&text, key).unwrap_or(0);
        Ok(Memory {
            rss_kib: get("VmRSS"),
            hwm_kib: get("VmHWM"),
            anon_kib: get("RssAnon"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tokio-runtime) w) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                        731 229 0 0 20 0 3 0 12345 1000000 2500 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 0 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn readings_of_several_processes_add_up() {
        let a = CpuSample {
            ticks: CpuTicks { utime: 1, stime: 2 },
            runtime_ns: Some(10),
        };
        let b = CpuSample {
            ticks: CpuTicks { utime: 3, stime: 4 },
            runtime_ns: Some(5),
        };
        let sum = a.plus(b);
        assert_eq!(sum.ticks.total(), 10);
        assert_eq!(sum.runtime_ns, Some(15));
        let unknown = CpuSample {
            runtime_ns: None,
            ..b
        };
        assert_eq!(
            a.plus(unknown).runtime_ns,
            None,
            "fine time only when every node has it"
        );
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let ticks = parse_stat(STAT).expect("parses");
        assert_eq!(
            ticks,
            CpuTicks {
                utime: 731,
                stime: 229
            }
        );
        assert_eq!(ticks.total(), 960);
    }

    #[test]
    fn truncated_stat_is_rejected() {
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn cpu_seconds_use_user_hz() {
        let a = CpuTicks {
            utime: 100,
            stime: 50,
        };
        let b = CpuTicks {
            utime: 220,
            stime: 80,
        };
        assert!((b.seconds_since(a) - 1.5).abs() < 1e-9);
        assert_eq!(a.seconds_since(b), 0.0);
    }

    #[test]
    fn schedstat_run_time_is_the_first_field() {
        assert_eq!(
            parse_schedstat("207733838 63156405 522\n"),
            Some(207_733_838)
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn fine_run_time_is_preferred_unless_ticks_show_more() {
        let ticks = |t| CpuTicks { utime: t, stime: 0 };
        let a = CpuSample {
            ticks: ticks(100),
            runtime_ns: Some(1_000_000_000),
        };
        // 12.5 ms of run time, one tick: the run time wins.
        let b = CpuSample {
            ticks: ticks(101),
            runtime_ns: Some(1_012_500_000),
        };
        assert!((b.seconds_since(a) - 0.0125).abs() < 1e-9);
        // 10 ms of run time but 50 ms of ticks: a thread exited, trust the ticks.
        let c = CpuSample {
            ticks: ticks(105),
            runtime_ns: Some(1_010_000_000),
        };
        assert!((c.seconds_since(a) - 0.05).abs() < 1e-9);
        // No schedstat: ticks.
        let d = CpuSample {
            ticks: ticks(102),
            runtime_ns: None,
        };
        assert!((d.seconds_since(a) - 0.02).abs() < 1e-9);
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tswitchboard\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                      RssAnon:\t    6000 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "RssAnon"), Some(6000));
        assert_eq!(parse_status_kib(status, "Threads"), None, "not a kB value");
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib(status, "Vm"), None, "whole key only");
    }

    #[test]
    fn own_process_is_readable() {
        let probe = ServerProbe::new(std::process::id());
        let cpu = probe.cpu().expect("stat");
        assert!(cpu.runtime_ns.is_some_and(|ns| ns > 0));
        assert!(probe.memory().expect("status").rss_kib > 0);
    }
}
