//! The page cache as a benchmark variable: emptying it (`posix_fadvise(DONTNEED)`), filling it,
//! measuring how much of a file it holds (`mincore`), and capping it with a memory cgroup so the
//! `pressure` and `thrash` regimes exist on a machine with far more RAM than the test file.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Writes back and then drops the file's pages from the page cache, so the next buffered run
/// starts cold. Dirty pages are not dropped by `DONTNEED`, hence the `fdatasync` first.
pub fn drop_cache(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    f.sync_data()?;
    // SAFETY: posix_fadvise only reads the descriptor `f` keeps open for the call and plain
    // integers; it touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Reads the whole file through the page cache so a `hot` run finds it resident.
pub fn warm(path: &Path) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    while f.read(&mut chunk)? > 0 {}
    Ok(())
}

/// The fraction (0.0–1.0) of the file's pages that are in the page cache now (`mincore`).
pub fn residency(path: &Path) -> std::io::Result<f64> {
    let f = File::open(path)?;
    let len = usize::try_from(f.metadata()?.len()).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(1.0);
    }
    // SAFETY: sysconf reads a constant of the running system; no memory is passed.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: a fresh read-only shared mapping of a file we hold open; the kernel picks the
    // address, so no existing memory is affected. It is unmapped below on every path.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr..addr+len` is the mapping made above and `vec` has one byte per page of it,
    // which is what mincore writes. The mapping is never read through, so no page is faulted in.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    let resident = vec.iter().filter(|&&b| b & 1 == 1).count();
    Ok(resident as f64 / pages as f64)
}

/// A memory cgroup this process can move itself into, capping how much page cache its reads
/// may hold. Works with cgroup v1 (`memory.limit_in_bytes`) and v2 (`memory.max`); needs write
/// access to the process's own memory cgroup (root, or a delegated subtree). Dropped: the
/// process moves back and the cgroup is removed.
pub struct MemCap {
    dir: PathBuf,
    home: PathBuf,
    limit_file: &'static str,
    limit: u64,
    inside: bool,
}

impl MemCap {
    /// Makes a child memory cgroup of this process's own. The error says why one could not be
    /// made (the report prints it).
    pub fn create() -> Result<MemCap, String> {
        let table = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let (home, limit_file) = Self::home(&table)?;
        let dir = home.join(format!("storage-io-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(MemCap {
            dir,
            home,
            limit_file,
            limit: u64::MAX,
            inside: false,
        })
    }

    /// Where this process's memory cgroup is mounted, and the name of its limit file.
    fn home(table: &str) -> Result<(PathBuf, &'static str), String> {
        for line in table.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "memory") {
                return Ok((
                    Path::new("/sys/fs/cgroup/memory").join(rel),
                    "memory.limit_in_bytes",
                ));
            }
            if controllers.is_empty() {
                let dir = Path::new("/sys/fs/cgroup").join(rel);
                let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if enabled.split_whitespace().any(|c| c == "memory") {
                    return Ok((dir, "memory.max"));
                }
            }
        }
        Err("no memory cgroup controller is available to this process".into())
    }

    /// Sets the cap in bytes.
    pub fn set_limit(&mut self, bytes: u64) -> Result<(), String> {
        let file = self.dir.join(self.limit_file);
        std::fs::write(&file, bytes.to_string())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        self.limit = bytes;
        Ok(())
    }

    /// The cap last set.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Moves this process (all its threads, and children started from now on) under the cap.
    pub fn enter(&mut self) -> Result<(), String> {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("cannot write {}: {e}", procs.display()))?;
        self.inside = true;
        Ok(())
    }

    /// Moves this process back to the cgroup it came from.
    pub fn leave(&mut self) -> Result<(), String> {
        if !self.inside {
            return Ok(());
        }
        let procs = self.home.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("cannot write {}: {e}", procs.display()))?;
        self.inside = false;
        Ok(())
    }

    /// Where the cgroup is (for the report).
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MemCap {
    fn drop(&mut self) {
        let _ = self.leave();
        // The kernel refuses rmdir for a moment while the last task is leaving; retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_table_v1_and_v2_are_understood() {
        let v1 = "4:memory:/a/b\n0::/\n";
        let (home, file) = MemCap::home(v1).unwrap();
        assert_eq!(home, Path::new("/sys/fs/cgroup/memory/a/b"));
        assert_eq!(file, "memory.limit_in_bytes");
        assert!(MemCap::home("5:cpu:/x\n").is_err());
    }

    #[test]
    fn residency_sees_a_warmed_file_and_a_dropped_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        warm(&path).unwrap();
        let hot = residency(&path).unwrap();
        assert!((0.0..=1.0).contains(&hot), "{hot}");
        drop_cache(&path).unwrap();
        let cold = residency(&path).unwrap();
        assert!(cold <= hot, "dropping the cache cannot add pages: {cold} > {hot}");
        assert_eq!(
            residency(&dir.path().join("missing")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
