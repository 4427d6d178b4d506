//! File descriptors: the limit is raised at start, and the count is reported.

/// Open file descriptors of this process (entries of `/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// The soft limit on open files.
pub fn fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}

/// Raises the soft limit to the hard one; returns `(soft, hard)` after.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard)?;
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}
